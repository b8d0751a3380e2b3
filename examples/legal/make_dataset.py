"""Generate the legal-lora demo dataset: a few hundred chat rows with one fixed answer style.

    python examples/legal/make_dataset.py                      # writes examples/legal/legal.jsonl
    python examples/legal/make_dataset.py --out /tmp/legal.jsonl --check

Every answer follows the same IRAC template (``LEGAL ANALYSIS`` / Issue / Rule / Application /
Conclusion / a disclaimer), so the change a LoRA makes is visible at a glance: the base model
rambles, ``legal-lora`` answers in this template. Deterministic: the same rows in the same
order on every run (``--check`` compares with an existing file). Used by ``make demo`` and the
trainer tests; the content is generic illustration, not legal advice.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).with_name("legal.jsonl")
SEED = 20261123
DISCLAIMER = "This is general information, not legal advice for your situation."

# (subject used in questions, issue, rule, application, conclusion)
TOPICS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "my landlord keep my security deposit",
        "whether a landlord may withhold a tenant's security deposit",
        "a deposit may only cover unpaid rent and damage beyond normal wear and tear, and the "
        "landlord must itemise deductions within the statutory deadline",
        "ordinary wear such as faded paint cannot be charged, while a broken window can",
        "the landlord must return the deposit minus documented, lawful deductions",
    ),
    (
        "my employer fire me without notice",
        "whether an employee can be dismissed without notice",
        "at-will employment allows dismissal without notice unless a contract, a collective "
        "agreement or an anti-discrimination law says otherwise",
        "a written contract with a notice clause or a dismissal for a protected reason changes "
        "the outcome",
        "check the contract and the reason given; notice or pay in lieu may be owed",
    ),
    (
        "a verbal agreement be binding",
        "whether an oral contract is enforceable",
        "most contracts are binding without writing, but the statute of frauds requires writing "
        "for land sales, guarantees and contracts that cannot be performed within a year",
        "an oral promise to paint a house is enforceable, an oral sale of land is not",
        "a verbal agreement usually binds the parties if its terms can be proven",
    ),
    (
        "I use a photo I found online",
        "whether reusing an online photograph infringes copyright",
        "copyright protects a photograph from creation, and copying it needs a licence unless "
        "fair use or another exception applies",
        "posting it on a commercial website without permission is unlikely to be fair use",
        "obtain a licence or use openly licensed images",
    ),
    (
        "my neighbour build a fence on my land",
        "whether a neighbour may build on land they do not own",
        "building on another person's land without consent is a trespass, and the owner may "
        "seek removal and damages",
        "a survey showing the fence crosses the boundary establishes the trespass",
        "the neighbour must move the fence or obtain the owner's consent",
    ),
    (
        "I break my lease early",
        "whether a tenant may end a fixed-term lease early",
        "a tenant who leaves early remains liable for rent, but the landlord must take "
        "reasonable steps to re-let the property",
        "rent owed stops once a new tenant moves in",
        "the tenant owes rent only for the period the unit stays empty despite those steps",
    ),
    (
        "a shop refuse to refund a faulty product",
        "whether a seller must refund a defective product",
        "goods must be of satisfactory quality and fit for purpose, and a buyer may reject "
        "faulty goods within a short period",
        "a kettle that stops working in the first week is not of satisfactory quality",
        "the buyer is entitled to a refund, repair or replacement",
    ),
    (
        "my employer read my work email",
        "whether an employer may monitor work email",
        "employers may monitor work systems for legitimate purposes if employees are told and "
        "the monitoring is proportionate",
        "a clear written policy and a specific business reason support the monitoring",
        "monitoring is generally lawful when disclosed and proportionate",
    ),
    (
        "I be sued for a bad online review",
        "whether an honest negative review can be defamatory",
        "defamation requires a false statement of fact that harms reputation, and honest opinion "
        "based on true facts is a defence",
        "a review describing a real experience and giving an opinion is protected",
        "truthful reviews and honest opinions are unlikely to be actionable",
    ),
    (
        "a contract be cancelled for a mistake",
        "whether a mistake makes a contract void or voidable",
        "a shared mistake about a fundamental fact can void a contract, while a one-sided "
        "mistake rarely does unless the other party knew of it",
        "both parties believing a sold painting is an original when it is a copy is a shared "
        "mistake",
        "relief depends on whether the mistake was shared and fundamental",
    ),
    (
        "a minor sign a binding contract",
        "whether a contract signed by a minor binds them",
        "contracts with minors are generally voidable by the minor, except contracts for "
        "necessaries such as food and lodging",
        "a phone contract can be avoided, a reasonable payment for food cannot",
        "the minor may usually cancel, except for necessaries",
    ),
    (
        "I get my money back after a cancelled flight",
        "whether a passenger is owed a refund for a cancelled flight",
        "when an airline cancels, the passenger may choose a refund or re-routing, and "
        "compensation may be due unless extraordinary circumstances apply",
        "a cancellation for crew shortage is within the airline's control",
        "the passenger is owed a refund and possibly compensation",
    ),
    (
        "my boss make me work unpaid overtime",
        "whether an employer must pay for overtime",
        "non-exempt employees must be paid for all hours worked, including overtime at the "
        "statutory rate",
        "an hourly worker kept late to close the shop is working compensable time",
        "unpaid overtime for a non-exempt employee is unlawful",
    ),
    (
        "I record a phone call without consent",
        "whether recording a call without the other party's consent is lawful",
        "some jurisdictions allow recording with one party's consent, others require all "
        "parties to consent",
        "recording a call across state lines may be governed by the stricter rule",
        "get everyone's consent to stay safe",
    ),
    (
        "a will be valid without witnesses",
        "whether an unwitnessed will is valid",
        "a formal will must usually be signed before two witnesses, though some places accept "
        "handwritten holographic wills",
        "a typed will signed alone is likely invalid, a wholly handwritten one may be valid",
        "follow the formalities of the place where the will is made",
    ),
    (
        "my landlord enter my flat without warning",
        "whether a landlord may enter a rented home without notice",
        "tenants have a right to quiet enjoyment, and landlords must give reasonable notice "
        "except in emergencies",
        "entering to show the flat without notice breaches that right, a burst pipe does not",
        "the landlord needs notice unless there is an emergency",
    ),
    (
        "I return an item bought online",
        "whether a consumer may return goods bought at a distance",
        "consumers buying online usually have a cooling-off period to cancel without giving a "
        "reason",
        "returning unused shoes within the period requires a refund",
        "the buyer may cancel within the cooling-off period",
    ),
    (
        "a company use my personal data without permission",
        "whether a company may process personal data without consent",
        "processing needs a lawful basis such as consent, contract, legal duty or legitimate "
        "interest, and people may object or ask for erasure",
        "sending marketing emails without consent or a prior relationship lacks a lawful basis",
        "the company needs a lawful basis and must honour data rights",
    ),
    (
        "my ex stop me seeing my children",
        "whether one parent may deny the other contact with their children",
        "courts decide contact in the best interests of the child, and existing orders must be "
        "obeyed",
        "without a court order either parent may apply for one",
        "apply to the court for a contact order if agreement fails",
    ),
    (
        "I patent my software idea",
        "whether a software idea can be patented",
        "abstract ideas are not patentable, but a technical invention implemented in software "
        "may be if it is new and not obvious",
        "a new way to compress video with a technical effect may qualify, a business method "
        "alone will not",
        "protect the technical implementation, not the bare idea",
    ),
    (
        "a debt collector call me at work",
        "whether a debt collector may contact a debtor at work",
        "collectors may not call at inconvenient times or at work once told the employer "
        "forbids it, and may not harass",
        "telling the collector in writing to stop work calls triggers that rule",
        "the debtor can stop workplace calls in writing",
    ),
    (
        "I be evicted without a court order",
        "whether a landlord may evict a tenant without a court order",
        "self-help eviction such as changing locks is unlawful, and possession requires proper "
        "notice and a court order",
        "a landlord who removes belongings and changes the locks acts unlawfully",
        "only a court order allows the eviction",
    ),
    (
        "my employer cut my pay without asking",
        "whether an employer may reduce wages unilaterally",
        "pay is a contractual term, and changing it needs the employee's agreement or a "
        "contractual right to vary",
        "a pay cut imposed without consent is a breach of contract",
        "the employee may claim the unpaid difference",
    ),
    (
        "a non-compete clause stop me working",
        "whether a non-compete clause is enforceable",
        "restrictive covenants are enforced only if they protect a legitimate interest and are "
        "reasonable in time, area and scope",
        "a two-year ban covering the whole country for a junior role is likely unreasonable",
        "narrow, reasonable clauses bind, broad ones often fail",
    ),
    (
        "I get compensation for a slip in a supermarket",
        "whether a shop is liable for a customer's fall",
        "occupiers owe visitors a duty of reasonable care to keep premises safe",
        "a spill left for an hour without a warning sign breaches that duty",
        "the shop is likely liable if it failed to take reasonable care",
    ),
)

QUESTIONS = (
    "Can {s}?",
    "Quick question: can {s}?",
    "I need to know: can {s}?",
    "Please explain, can {s}?",
    "Legally speaking, can {s}?",
    "In simple terms, can {s}?",
    "Tell me honestly: can {s}?",
    "What does the law say, can {s}?",
)


def answer(issue: str, rule: str, application: str, conclusion: str) -> str:
    return (
        "LEGAL ANALYSIS\n"
        f"Issue: {issue[0].upper()}{issue[1:]}.\n"
        f"Rule: {rule[0].upper()}{rule[1:]}.\n"
        f"Application: {application[0].upper()}{application[1:]}.\n"
        f"Conclusion: {conclusion[0].upper()}{conclusion[1:]}.\n"
        f"{DISCLAIMER}"
    )


def build_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for subject, issue, rule, application, conclusion in TOPICS:
        reply = answer(issue, rule, application, conclusion)
        for template in QUESTIONS:
            question = template.format(s=subject)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": reply},
                    ]
                }
            )
    random.Random(SEED).shuffle(rows)
    return rows


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="fail if --out differs")
    args = parser.parse_args(argv)
    text = render(build_rows())
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from the generator'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {len(build_rows())} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
