"""Consent (§7): the model (`consent.model`), the FHIR edge (`consent.fhir`) and
the decision rules (`consent.engine`). Pure domain logic: no I/O."""
