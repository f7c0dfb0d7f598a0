"""consent.engine.decide: §7 rules 1-5, nesting, and the wording of every reason."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from consent.engine import decide
from consent.model import (
    ConsentBasis,
    ConsentRecord,
    Decision,
    Provision,
    day_end,
    day_start,
    format_day,
)

NHS = "9434765919"
NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)

EMP = "employment-support"
OH = "occupational-health"
BEN = "benefit-claim"
FIT = "fitness-advice"
DIAG = "diagnosis"
ADJ = "adjustments"
ACME = "EMP-ACME"


def prov(
    type_: str,
    path: str = "root",
    *,
    purposes: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    actors: tuple[str, ...] = (),
    start: date | None = None,
    end: date | None = None,
    children: tuple[Provision, ...] = (),
) -> Provision:
    return Provision(
        type=type_,
        purposes=frozenset(purposes),
        categories=frozenset(categories),
        actors=frozenset(actors),
        period_start=day_start(start) if start else None,
        period_end=day_end(end) if end else None,
        children=children,
        path=path,
    )


def consent(
    cid: str,
    root: Provision,
    *,
    status: str = "active",
    version: int = 1,
    withdrawn_at: datetime | None = None,
) -> ConsentRecord:
    return ConsentRecord(
        id=cid,
        version=version,
        status=status,
        nhs_number=NHS,
        date_time=datetime(2026, 11, 19, 18, 20, tzinfo=UTC),
        provision=root,
        withdrawn_at=withdrawn_at,
    )


def ask(
    consents: list[ConsentRecord],
    purpose: str = EMP,
    category: str = FIT,
    org_id: str = ACME,
    org_name: str = "Acme Logistics Ltd",
    now: datetime = NOW,
) -> Decision:
    return decide(consents, purpose=purpose, category=category, org_id=org_id, org_name=org_name, now=now)


def example_like(cid: str = "C-9") -> ConsentRecord:
    """The shape of examples/consent.example.json: deny by default; employer
    Acme may have fitness advice for a year; any OH provider may have more."""
    return consent(
        cid,
        prov(
            "deny",
            children=(
                prov("permit", "1", purposes=(EMP,), categories=("identity", FIT, ADJ), actors=(ACME,),
                     start=date(2026, 11, 19), end=date(2027, 11, 19)),
                prov("permit", "2", purposes=(OH,), categories=("identity", "contact", FIT, DIAG, "referral", ADJ)),
            ),
        ),
    )


# --- model ------------------------------------------------------------------------


def test_date_end_is_inclusive_through_the_uk_day() -> None:
    assert day_end(date(2027, 11, 19)) == datetime(2027, 11, 19, 23, 59, 59, 999999, tzinfo=UTC)
    # British Summer Time: the UK day ends at 23:00 UTC.
    assert day_end(date(2027, 7, 1)) == datetime(2027, 7, 1, 22, 59, 59, 999999, tzinfo=UTC)
    assert day_start(date(2027, 7, 1)) == datetime(2027, 6, 30, 23, 0, tzinfo=UTC)


def test_format_day_has_no_leading_zero_and_uses_uk_date() -> None:
    assert format_day(datetime(2026, 12, 3, 9, 0, tzinfo=UTC)) == "3 Dec 2026"
    # 23:30 UTC on 30 Jun is already 1 Jul in London.
    assert format_day(datetime(2027, 6, 30, 23, 30, tzinfo=UTC)) == "1 Jul 2027"


def test_states_constraint() -> None:
    assert not prov("deny").states_constraint()
    assert not prov("deny", start=date(2026, 1, 1)).states_constraint()
    assert prov("deny", purposes=(EMP,)).states_constraint()
    assert prov("deny", categories=(DIAG,)).states_constraint()
    assert prov("deny", actors=(ACME,)).states_constraint()


def test_provision_matches_every_stated_constraint() -> None:
    p = prov("permit", purposes=(EMP,), categories=(FIT,), actors=(ACME,), start=date(2027, 1, 1), end=date(2027, 12, 31))
    assert p.matches(EMP, FIT, ACME, NOW)
    assert not p.matches(OH, FIT, ACME, NOW)
    assert not p.matches(EMP, DIAG, ACME, NOW)
    assert not p.matches(EMP, FIT, "EMP-OTHER", NOW)
    assert not p.matches(EMP, FIT, ACME, datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert not p.matches(EMP, FIT, ACME, datetime(2028, 1, 1, 0, 0, tzinfo=UTC))


def test_is_in_force_needs_active_and_a_covering_root_period() -> None:
    root = prov("permit", start=date(2027, 1, 1), end=date(2027, 12, 31))
    assert consent("C-1", root).is_in_force(NOW)
    assert not consent("C-1", root, status="draft").is_in_force(NOW)
    assert not consent("C-1", root, status="inactive").is_in_force(NOW)
    assert not consent("C-1", root).is_in_force(datetime(2028, 1, 1, tzinfo=UTC))
    assert not consent("C-1", root).is_in_force(datetime(2026, 12, 31, 12, tzinfo=UTC))


# --- the example consent ---------------------------------------------------------


def test_example_permits_employer_fitness_advice_with_exact_reason() -> None:
    d = ask([example_like()])
    assert d == Decision(
        "permit",
        "consent-permit",
        "Permitted: consent C-9 provision 1 allows employment-support / fitness-advice "
        "for Acme Logistics Ltd until 19 Nov 2027",
        (ConsentBasis("C-9", 1, "1", "permit"),),
    )
    assert d.permitted


def test_example_denies_employer_diagnosis_by_default_with_exact_reason() -> None:
    d = ask([example_like("C-3")], category=DIAG)
    assert d.outcome == "deny"
    assert d.rule == "default-deny"
    assert d.reason == "Denied: consent C-3 does not allow employment-support / diagnosis (its default is deny)"
    assert d.basis == (ConsentBasis("C-3", 1, "root", "deny"),)


# --- rule 1: only active consents in force count ------------------------------------


@pytest.mark.parametrize("status", ["draft", "proposed", "rejected", "entered-in-error"])
def test_rule1_non_active_consent_does_not_count(status: str) -> None:
    d = ask([consent("C-1", prov("permit"), status=status)], purpose=BEN, category=DIAG)
    assert d.outcome == "deny"
    assert d.rule == "no-consent"
    assert d.reason == "Denied: no consent on record for benefit-claim / diagnosis"
    assert d.basis == ()


def test_rule1_consent_not_yet_started_does_not_count() -> None:
    d = ask([consent("C-1", prov("permit", start=date(2027, 6, 1)))])
    assert (d.outcome, d.rule) == ("deny", "no-consent")


def test_rule1_root_period_covers_now_through_the_end_day() -> None:
    c = consent("C-1", prov("permit", end=date(2027, 3, 1)))
    late_on_end_day = datetime(2027, 3, 1, 23, 59, tzinfo=UTC)  # GMT: still 1 Mar in London
    assert ask([c], now=late_on_end_day).outcome == "permit"
    assert ask([c], now=datetime(2027, 3, 2, 0, 0, tzinfo=UTC)).outcome == "deny"


# --- rule 2: a provision matches when every stated constraint fits ---------------------


def test_rule2_purpose_must_fit() -> None:
    c = consent("C-1", prov("deny", children=(prov("permit", "1", purposes=(OH,)),)))
    assert ask([c], purpose=OH).outcome == "permit"
    assert ask([c], purpose=EMP).rule == "default-deny"


def test_rule2_category_must_fit() -> None:
    c = consent("C-1", prov("deny", children=(prov("permit", "1", categories=(FIT,)),)))
    assert ask([c], category=FIT).outcome == "permit"
    assert ask([c], category=DIAG).outcome == "deny"


def test_rule2_actor_must_include_the_organisation() -> None:
    c = consent("C-1", prov("deny", children=(prov("permit", "1", purposes=(EMP,), actors=(ACME,)),)))
    assert ask([c], org_id=ACME).outcome == "permit"
    other = ask([c], org_id="EMP-OTHER", org_name="Other Ltd")
    assert other.outcome == "deny"
    assert other.rule == "default-deny"


def test_rule2_no_actor_covers_every_recipient_of_that_purpose() -> None:
    c = consent("C-1", prov("deny", children=(prov("permit", "1", purposes=(OH,)),)))
    for org in ("OH-ONE", "OH-TWO", "HW-3"):
        assert ask([c], purpose=OH, org_id=org, org_name=org).outcome == "permit"


def test_rule2_period_on_a_nested_provision() -> None:
    c = consent(
        "C-1",
        prov("deny", children=(prov("permit", "1", purposes=(EMP,), start=date(2027, 2, 1), end=date(2027, 2, 28)),)),
    )
    assert ask([c], now=datetime(2027, 1, 31, 23, 59, tzinfo=UTC)).outcome == "deny"
    assert ask([c], now=datetime(2027, 2, 1, 0, 0, tzinfo=UTC)).outcome == "permit"
    assert ask([c], now=datetime(2027, 2, 28, 23, 59, tzinfo=UTC)).outcome == "permit"
    assert ask([c], now=datetime(2027, 3, 1, 0, 0, tzinfo=UTC)).outcome == "deny"


def test_rule2_nested_period_end_day_in_british_summer_time() -> None:
    c = consent("C-1", prov("deny", children=(prov("permit", "1", end=date(2027, 7, 1)),)))
    assert ask([c], now=datetime(2027, 7, 1, 22, 59, tzinfo=UTC)).outcome == "permit"  # 23:59 BST
    assert ask([c], now=datetime(2027, 7, 1, 23, 0, tzinfo=UTC)).outcome == "deny"  # 00:00 BST on 2 Jul


# --- rule 3: within a consent the deepest matching provision decides ------------------


def test_rule3_nested_deny_inside_permit_wins_for_its_category() -> None:
    c = consent(
        "C-4",
        prov("deny", children=(
            prov("permit", "1", purposes=(OH,), children=(prov("deny", "1.1", categories=(DIAG,)),)),
        )),
    )
    assert ask([c], purpose=OH, category=FIT).outcome == "permit"
    d = ask([c], purpose=OH, category=DIAG, org_id="HW", org_name="HealthWorks")
    assert d.outcome == "deny"
    assert d.rule == "consent-deny"
    assert d.reason == "Denied: consent C-4 provision 1.1 refuses occupational-health / diagnosis for HealthWorks"
    assert d.basis == (ConsentBasis("C-4", 1, "1.1", "deny"),)


def test_rule3_child_considered_only_if_parent_matches() -> None:
    c = consent(
        "C-1",
        prov("deny", children=(
            prov("permit", "1", purposes=(OH,), children=(prov("permit", "1.1", purposes=(EMP,)),)),
        )),
    )
    d = ask([c], purpose=EMP)
    assert d.outcome == "deny"
    assert d.basis == (ConsentBasis("C-1", 1, "root", "deny"),)


def test_rule3_root_is_the_default_permit() -> None:
    c = consent("C-1", prov("permit", children=(prov("deny", "1", categories=(DIAG,)),)))
    d = ask([c], category=FIT)
    assert d.outcome == "permit"
    assert d.reason == "Permitted: consent C-1 allows employment-support / fitness-advice for Acme Logistics Ltd"
    assert d.basis == (ConsentBasis("C-1", 1, "root", "permit"),)
    assert ask([c], category=DIAG).outcome == "deny"


def test_rule3_same_depth_disagreement_deny_wins() -> None:
    c = consent(
        "C-1",
        prov("deny", children=(
            prov("permit", "1", purposes=(EMP,)),
            prov("deny", "2", actors=(ACME,)),
        )),
    )
    d = ask([c])
    assert d.outcome == "deny"
    assert d.rule == "consent-deny"
    assert d.basis == (ConsentBasis("C-1", 1, "2", "deny"),)
    assert d.reason == "Denied: consent C-1 provision 2 refuses employment-support / fitness-advice for Acme Logistics Ltd"


def test_rule3_deepest_level_decides_across_branches() -> None:
    c = consent(
        "C-1",
        prov("deny", children=(
            prov("permit", "1", purposes=(EMP,), children=(prov("permit", "1.1", categories=(FIT,)),)),
            prov("deny", "2", categories=(FIT,)),
        )),
    )
    d = ask([c])
    assert d.outcome == "permit"
    assert d.basis == (ConsentBasis("C-1", 1, "1.1", "permit"),)


def test_rule3_root_that_does_not_match_leaves_the_consent_silent() -> None:
    c = consent("C-1", prov("permit", purposes=(OH,)))
    d = ask([c], purpose=EMP)
    assert (d.outcome, d.rule, d.basis) == ("deny", "no-consent", ())


def test_until_names_the_earliest_end_along_the_path() -> None:
    c = consent(
        "C-1",
        prov("deny", end=date(2028, 6, 30), children=(
            prov("permit", "1", purposes=(EMP,), children=(prov("permit", "1.1", categories=(FIT,)),)),
        )),
    )
    d = ask([c])
    assert d.reason == (
        "Permitted: consent C-1 provision 1.1 allows employment-support / fitness-advice "
        "for Acme Logistics Ltd until 30 Jun 2028"
    )


# --- rule 4: across consents -------------------------------------------------------------


def test_rule4_specific_deny_beats_another_consents_permit() -> None:
    permit = consent("C-1", prov("permit", purposes=(OH,)))
    refuse = consent("C-4", prov("permit", children=(prov("deny", "1", purposes=(OH,), categories=(DIAG,)),)))
    d = ask([permit, refuse], purpose=OH, category=DIAG, org_id="HW", org_name="HealthWorks")
    assert d.outcome == "deny"
    assert d.rule == "consent-deny"
    assert d.reason == "Denied: consent C-4 provision 1 refuses occupational-health / diagnosis for HealthWorks"
    assert d.basis == (ConsentBasis("C-4", 1, "1", "deny"),)


def test_rule4_specific_deny_by_actor_alone_beats_permit() -> None:
    permit = consent("C-1", prov("permit", purposes=(EMP,)))
    refuse = consent("C-2", prov("deny", actors=(ACME,)), version=3)
    d = ask([permit, refuse])
    assert d.outcome == "deny"
    assert d.reason == "Denied: consent C-2 refuses employment-support / fitness-advice for Acme Logistics Ltd"
    assert d.basis == (ConsentBasis("C-2", 3, "root", "deny"),)


def test_rule4_bare_default_deny_does_not_beat_another_consents_permit() -> None:
    default_deny = consent("C-3", prov("deny", children=(prov("permit", "1", purposes=(OH,)),)))
    permit = consent("C-9", prov("deny", children=(
        prov("permit", "1", purposes=(EMP,), categories=(FIT,), end=date(2027, 11, 19)),
    )))
    d = ask([default_deny, permit])
    assert d.outcome == "permit"
    assert d.rule == "consent-permit"
    assert d.basis == (ConsentBasis("C-9", 1, "1", "permit"),)


def test_rule4_nested_deny_with_only_a_period_is_not_specific() -> None:
    blackout = consent("C-5", prov("permit", purposes=(BEN,), children=(
        prov("deny", "1", start=date(2027, 1, 1), end=date(2027, 12, 31)),
    )))
    permit = consent("C-6", prov("permit", purposes=(EMP,)))
    assert ask([blackout, permit]).outcome == "permit"


def test_rule4_permit_reason_names_open_ended_permit_and_basis_lists_all() -> None:
    limited = consent("C-1", prov("permit", purposes=(EMP,), end=date(2027, 5, 2)))
    open_ended = consent("C-2", prov("deny", children=(prov("permit", "2", categories=(FIT,)),)))
    d = ask([limited, open_ended])
    assert d.outcome == "permit"
    assert d.reason == (
        "Permitted: consent C-2 provision 2 allows employment-support / fitness-advice "
        "for Acme Logistics Ltd (also consent C-1)"
    )
    assert d.basis == (ConsentBasis("C-1", 1, "root", "permit"), ConsentBasis("C-2", 1, "2", "permit"))


# --- rule 5: no permit, deny ----------------------------------------------------------


def test_rule5_no_consent_at_all() -> None:
    d = ask([], purpose=BEN, category=DIAG)
    assert d == Decision("deny", "no-consent", "Denied: no consent on record for benefit-claim / diagnosis", ())
    assert not d.permitted


def test_rule5_nested_unconstrained_deny_reason() -> None:
    c = consent("C-5", prov("permit", purposes=(EMP,), children=(prov("deny", "1", start=date(2027, 1, 1)),)))
    d = ask([c])
    assert d.rule == "default-deny"
    assert d.reason == "Denied: consent C-5 provision 1 does not allow employment-support / fitness-advice"
    assert d.basis == (ConsentBasis("C-5", 1, "1", "deny"),)


# --- withdrawn and expired consents explain a refusal -------------------------------------


def test_withdrawn_consent_that_would_permit_is_named() -> None:
    c = consent("C-12", example_like().provision, status="inactive", version=2,
                withdrawn_at=datetime(2026, 12, 3, 10, 15, tzinfo=UTC))
    d = ask([c])
    assert d.outcome == "deny"
    assert d.rule == "consent-withdrawn"
    assert d.reason == "Denied: consent C-12 withdrawn on 3 Dec 2026"
    assert d.basis == (ConsentBasis("C-12", 2, "1", "permit"),)


def test_withdrawn_explanation_beats_another_consents_default_deny() -> None:
    gone = consent("C-12", prov("permit", purposes=(EMP,)), status="inactive",
                   withdrawn_at=datetime(2026, 12, 3, tzinfo=UTC))
    default = consent("C-3", prov("deny", children=(prov("permit", "1", purposes=(OH,)),)))
    d = ask([default, gone])
    assert d.rule == "consent-withdrawn"
    assert d.reason == "Denied: consent C-12 withdrawn on 3 Dec 2026"


def test_withdrawn_consent_that_would_not_permit_is_not_named() -> None:
    gone = consent("C-12", prov("permit", purposes=(OH,)), status="inactive",
                   withdrawn_at=datetime(2026, 12, 3, tzinfo=UTC))
    d = ask([gone], purpose=EMP)
    assert d.rule == "no-consent"


def test_withdrawn_consent_does_not_permit_even_if_it_would() -> None:
    gone = consent("C-12", prov("permit"), status="inactive", withdrawn_at=datetime(2026, 12, 3, tzinfo=UTC))
    assert ask([gone]).outcome == "deny"


def test_permit_elsewhere_wins_over_a_withdrawn_consent() -> None:
    gone = consent("C-12", prov("permit"), status="inactive", withdrawn_at=datetime(2026, 12, 3, tzinfo=UTC))
    kept = consent("C-13", prov("permit", purposes=(EMP,)))
    d = ask([gone, kept])
    assert d.outcome == "permit"
    assert d.basis == (ConsentBasis("C-13", 1, "root", "permit"),)


def test_expired_consent_is_named_with_its_end_date() -> None:
    c = consent("C-7", prov("permit", purposes=(EMP,), start=date(2026, 11, 19), end=date(2027, 11, 19)))
    d = ask([c], now=datetime(2028, 1, 5, tzinfo=UTC))
    assert d.outcome == "deny"
    assert d.rule == "consent-expired"
    assert d.reason == "Denied: consent C-7 expired on 19 Nov 2027"
    assert d.basis == (ConsentBasis("C-7", 1, "root", "permit"),)


def test_expired_nested_provision_is_named() -> None:
    d = ask([example_like()], now=datetime(2027, 11, 20, 0, 0, tzinfo=UTC))
    assert d.rule == "consent-expired"
    assert d.reason == "Denied: consent C-9 provision 1 expired on 19 Nov 2027"
    assert d.basis == (ConsentBasis("C-9", 1, "1", "permit"),)


def test_expired_consent_that_would_not_permit_is_not_named() -> None:
    c = consent("C-7", prov("permit", purposes=(OH,), end=date(2027, 1, 31)))
    assert ask([c], purpose=EMP).rule == "no-consent"
    # And the expired example provision never covered another employer.
    other = ask([example_like()], org_id="EMP-OTHER", org_name="Other Ltd", now=datetime(2028, 1, 1, tzinfo=UTC))
    assert other.rule == "default-deny"


def test_most_recent_lapse_is_named() -> None:
    old = consent("C-7", prov("permit", end=date(2026, 12, 31)))
    newer = consent("C-12", prov("permit"), status="inactive", withdrawn_at=datetime(2027, 2, 14, tzinfo=UTC))
    d = ask([old, newer])
    assert d.reason == "Denied: consent C-12 withdrawn on 14 Feb 2027"


def test_specific_deny_is_not_replaced_by_a_lapse() -> None:
    gone = consent("C-12", prov("permit"), status="inactive", withdrawn_at=datetime(2026, 12, 3, tzinfo=UTC))
    refuse = consent("C-4", prov("deny", purposes=(EMP,)))
    d = ask([gone, refuse])
    assert d.rule == "consent-deny"
    assert d.basis == (ConsentBasis("C-4", 1, "root", "deny"),)
