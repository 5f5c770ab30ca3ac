"""The held-out PII variant set: personal data in the forms people write, and look-alikes that are not.

Written once, before it was measured. Its first draw (``DEV_SEED``) scored SSN recall 0.925 and phone
0.975; the misses (a separator before a line break, "+49 89 2190 0" grouped unlike Germany's habit) were
fixed, so that draw is the development set. ``HELDOUT_SEED`` is a fresh draw of the same forms, measured
after the fixes and never tuned on. Values are valid by their own rules (Luhn, mod-97, the numbering plan
of their country), so a miss is the detector's. ``python -m tests.pii.heldout`` prints recall and
precision per kind.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

DEV_SEED = 90210
HELDOUT_SEED = 4417
DASHES = ("-", "\u2013", "\u2014", "\u2212", "\u2011")


@dataclass(frozen=True)
class Case:
    text: str
    kind: str | None  # the personal data planted, None for a look-alike
    value: str | None = None


def _sep(rng: random.Random) -> str:
    return rng.choice(["-", "-", " ", ".", rng.choice(DASHES), " - ", "\u00a0"])


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def _ssn_case(rng: random.Random) -> Case:
    digits = _ssn(rng)
    if rng.random() < 0.3:
        value = digits
        label = rng.choice(["SSN:", "SSN ", "SSN#", "ssn: ", "Social Security Number: ", "Soc. Sec. No. ", "SS# "])
    else:
        sep = _sep(rng)
        value = f"{digits[:3]}{sep}{digits[3:5]}{sep}{digits[5:]}"
        if rng.random() < 0.15:
            value = f"{digits[:3]}{sep}{digits[3:5]}{sep}\n{digits[5:]}"
        label = rng.choice(["SSN: ", "SSN#", "SSN ", "ssn:", "Social Security Number: ", "SOCIAL SECURITY NO. ", "Employee SSN ", "", "SS#: "])
    lead = rng.choice(["", "Employee: Dana Whitfield\n", "W-2 copy B\n", "Name: R. Okafor, "])
    return Case(f"{lead}{label}{value}", "ssn", value)


def _card_number(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _card_case(rng: random.Random) -> Case:
    digits = _card_number(rng)
    groups = [digits[:4], digits[4:10], digits[10:]] if len(digits) == 15 else [digits[i:i + 4] for i in range(0, 16, 4)]
    style = rng.random()
    if style < 0.2:
        value = digits
    else:
        sep = rng.choice([" ", "-", ".", rng.choice(DASHES), "\u00a0"])
        value = sep.join(groups)
        if style > 0.85:
            cut = rng.randint(1, len(groups) - 1)
            value = sep.join(groups[:cut]) + sep.rstrip() + "\n" + sep.join(groups[cut:]) if sep.strip() else \
                " ".join(groups[:cut]) + "\n" + " ".join(groups[cut:])
    label = rng.choice(["Card: ", "Card#", "CC: ", "Visa ", "Card number ", "Paid with card ", "", "CARD NO. ", "Credit card: "])
    return Case(f"{label}{value}", "credit_card", value)


_IBAN_FORMATS = {"DE": "18n", "GB": "4a14n", "FR": "23n", "NL": "4a10n", "ES": "20n", "IT": "1a22n", "BE": "12n", "AT": "16n"}


def _iban(rng: random.Random) -> str:
    country, layout = rng.choice(sorted(_IBAN_FORMATS.items()))
    bban = ""
    for count, kind in ((int(part[:-1]), part[-1]) for part in _split_layout(layout)):
        alphabet = string.ascii_uppercase if kind == "a" else string.digits
        bban += "".join(rng.choice(alphabet) for _ in range(count))
    if country == "FR" or country == "IT" or country == "BE" or country == "ES":
        # National check digits inside the BBAN are checked by python-stdnum for some countries: draw until valid.
        for _ in range(2000):
            candidate = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
            if stdnum_iban.is_valid(candidate):
                return candidate
            bban = "".join(rng.choice(string.digits if c.isdigit() else string.ascii_uppercase) for c in bban)
    return country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban


def _split_layout(layout: str) -> list[str]:
    parts, number = [], ""
    for char in layout:
        number += char
        if char.isalpha():
            parts.append(number)
            number = ""
    return parts


def _iban_case(rng: random.Random) -> Case:
    while not stdnum_iban.is_valid(compact := _iban(rng)):
        pass
    grouped = " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    value = rng.choice([compact, grouped, grouped, grouped.lower(), compact.lower()])
    if rng.random() < 0.15 and " " in value:
        parts = value.split(" ")
        cut = rng.randint(1, len(parts) - 1)
        value = " ".join(parts[:cut]) + "\n" + " ".join(parts[cut:])
    label = rng.choice(["IBAN: ", "IBAN:", "iban ", "Pay to IBAN ", "", "Account (IBAN) "])
    return Case(f"{label}{value}", "iban", value)


def _email_case(rng: random.Random) -> Case:
    user = rng.choice(["jane.doe", "J.Smith", "billing+acme", "o_connor", "mike-r", "ACCOUNTS", "x.y.z"])
    domain = rng.choice(["example.com", "mail.example.co.uk", "acme-corp.io", "EXAMPLE.ORG", "uni.example.edu"])
    value = f"{user}@{domain}"
    text = rng.choice([f"Email: {value}", f"E-mail:{value}", f"contact <{value}>", f"mailto:{value}", f"write to {value}.",
                       f"EMAIL {value.upper()}"])
    return Case(text, "email", value.upper() if text.startswith("EMAIL ") else value)


_AREAS = ("212", "415", "646", "312", "617", "202", "303", "206", "404", "713", "503", "702")


def _us_phone(rng: random.Random) -> str:
    while True:
        number = rng.choice(_AREAS) + str(rng.randint(200, 999)) + f"{rng.randint(0, 9999):04d}"
        if number[3:6] != "555" and phonenumbers.is_valid_number(phonenumbers.parse(number, "US")):
            return number


def _phone_case(rng: random.Random) -> Case:
    if rng.random() < 0.7:
        d = _us_phone(rng)
        sep = rng.choice(["-", ".", " ", rng.choice(DASHES)])
        value = rng.choice([f"({d[:3]}) {d[3:6]}-{d[6:]}", f"{d[:3]}{sep}{d[3:6]}{sep}{d[6:]}", f"+1 {d[:3]} {d[3:6]} {d[6:]}",
                            f"1-{d[:3]}-{d[3:6]}-{d[6:]}", f"+1{sep}{d[:3]}{sep}{d[3:6]}{sep}{d[6:]}"])
    else:
        value = rng.choice(["+49 30 901820", "+44 20 7946 0958", "+33 1 42 68 53 00", "+49 89 2190 0", "+31 20 624 1111",
                            "+44 161 496 0000", "+39 06 6982 0000", "+34 91 123 45 67"])
    label = rng.choice(["Tel.", "Tel: ", "Phone: ", "Ph ", "Mobile: ", "Fax ", "call ", "TEL.", "Phone:", "Cell "])
    return Case(f"{label}{value}", "phone", value)


def _secret_case(rng: random.Random) -> Case:
    token = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(8, 14)))
    choice = rng.randrange(7)
    if choice == 0:
        value = "sk-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
        return Case(f"OPENAI_KEY {value}", "secret", value)
    if choice == 1:
        value = "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        return Case(f"aws access key id {value}", "secret", value)
    if choice == 2:
        value = "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36))
        return Case(f"deploy with {value}", "secret", value)
    label = rng.choice(["Password: ", "password=", "PWD: ", "API key: ", "api_key=", "Token: ", "Passcode: "])
    return Case(f"{label}{token}", "secret", token)


def _luhn_invalid(rng: random.Random) -> str:
    number = _card_number(rng)
    return number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)


def _look_alike(rng: random.Random) -> Case:
    year = rng.choice([2023, 2024, 2025, 2026])
    bad_card = _luhn_invalid(rng)
    bad_iban = (lambda c: c[:2] + f"{(int(c[2:4]) + rng.randint(1, 50)) % 97 + 2:02d}" + c[4:])(_iban(rng))
    text = rng.choice([
        f"Order ORD-{year}-{rng.randint(100000, 999999)}",
        f"Invoice no. INV-{rng.randint(10**8, 10**9 - 1)}",
        f"PO#{rng.randint(10**8, 10**9 - 1)}",
        f"Date: {rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{year}",
        f"Due {year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"Total: ${rng.randint(1, 99999):,}.{rng.randint(0, 99):02d}",
        f"SKU {rng.randint(1000, 9999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"Tracking 1Z{rng.randint(100, 999)}AA1{rng.randint(10**9, 10**10 - 1)}",
        f"EIN {rng.randint(10, 99)}-{rng.randint(10**6, 10**7 - 1)}",
        f"Card ending in {rng.randint(1000, 9999)}",
        f"Ref {bad_card}",
        f"Card {bad_card[:4]} {bad_card[4:8]} {bad_card[8:12]} {bad_card[12:]}",
        f"IBAN {bad_iban}",
        f"Account no. {rng.randint(10**9, 10**10 - 1)}",
        f"ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
        f"Qty {rng.randint(1, 40)} x {rng.randint(1, 99)}.{rng.randint(0, 99):02d}",
        f"Version {rng.randint(1, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 200)}",
        f"Batch {year}{rng.randint(10**7, 10**8 - 1)}",
        f"Item #{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"Serial S/N {rng.randint(10**11, 10**12 - 1)}",
        f"Time {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        f"Password must be at least {rng.randint(8, 16)} characters.",
        f"Contact us at the front desk, room {rng.randint(100, 999)}",
        f"Lot {rng.randint(100, 999)}.{rng.randint(10, 99)}.{rng.randint(1000, 9999)}x",
        f"Customer ID CUST-{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
    ])
    return Case(text, None)


def heldout_cases(seed: int = HELDOUT_SEED) -> list[Case]:
    """40 positives per kind and 240 look-alikes, the same for the same seed."""
    rng = random.Random(seed)
    makers = (_ssn_case, _card_case, _iban_case, _email_case, _phone_case, _secret_case)
    cases = [maker(rng) for maker in makers for _ in range(40)]
    return cases + [_look_alike(rng) for _ in range(240)]


def score(find, seed: int = HELDOUT_SEED) -> dict[str, dict[str, float]]:
    """Recall and precision per kind of ``find(text) -> [(kind, start, end)]`` on the held-out cases.

    A positive is found when a finding of its kind covers its value (line breaks folded); any finding on
    a look-alike, or of another kind, is a false positive.
    """
    right, wrong, missed = Counter(), Counter(), Counter()
    for case in heldout_cases(seed):
        findings = find(case.text)
        hit = False
        for kind, start, end in findings:
            if case.kind == kind and case.value is not None and case.text.find(case.value) >= start and \
                    case.text.find(case.value) + len(case.value) <= end:
                hit = True
            else:
                wrong[kind] += 1
        if case.kind is not None:
            (right if hit else missed)[case.kind] += 1
    kinds = sorted(set(right) | set(missed) | set(wrong))
    return {kind: {"positives": right[kind] + missed[kind], "recall": right[kind] / max(right[kind] + missed[kind], 1),
                   "precision": right[kind] / max(right[kind] + wrong[kind], 1), "false_positives": wrong[kind]}
            for kind in kinds}


if __name__ == "__main__":
    from ocrloop.pii import find_pii

    for name, seed in (("development", DEV_SEED), ("held-out", HELDOUT_SEED)):
        print(f"{name} set (seed {seed}, {len(heldout_cases(seed))} cases)")
        for kind, row in score(lambda text: [(f.kind, f.start, f.end) for f in find_pii(text)], seed).items():
            print(f"  {kind:12s} positives {row['positives']:3d}  recall {row['recall']:.3f}  precision {row['precision']:.3f}"
                  f"  false positives {row['false_positives']}")
