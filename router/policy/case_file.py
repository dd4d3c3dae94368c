"""The schema of a bundle's decision cases (`<bundle>/cases/*.yaml`): the request each
describes and what the bundle must make of it. Loading and running them: router.policy.cases."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from router.policy.model import Name
from router.yamlconf import Strict


class CaseRequest(Strict):
    # The class the request starts with; None: the tenant's (below), else the bundle's default.
    declared: Name | None = None
    tenant: Name | None = None  # the asking tenant of tenants.yaml
    x_data_class: Name | None = None  # the header's value: may raise the class, never lower
    text: tuple[str, ...] = ()  # free-standing strings, each scanned like a JSON string leaf
    body: Any = None  # a JSON body, scanned and redacted as the router does
    query: str = ""  # a query string (without '?')
    headers: dict[str, str] = {}  # scanned only if the bundle names them in detection.headers
    entities: tuple[str, ...] = ()  # taken as found, as if detection had reported them


class PermitExpectation(Strict):
    tier: str
    jurisdictions: tuple[str, ...] = ()  # of the destination's endpoints; all must pass
    endpoints: tuple[str, ...] = ()  # the destination's endpoint hosts; all must pass
    allow: bool


class RedactionExpectation(Strict):
    absent: tuple[str, ...] = ()  # substrings the tier's view must not contain
    present: tuple[str, ...] = ()  # substrings it must contain ("<EMAIL_1>", "<EMAIL#")
    counts: dict[str, Annotated[int, Field(ge=0)]] | None = None  # redactions per entity, exact


class Expectation(Strict):
    data_class: Name | None = None
    entities: tuple[str, ...] | None = None  # every entity type found (or given), exactly
    permits: tuple[PermitExpectation, ...] = ()
    redaction: dict[str, RedactionExpectation] = {}

    @model_validator(mode="after")
    def _something(self) -> Expectation:
        if (
            self.data_class is None
            and self.entities is None
            and not self.permits
            and not self.redaction
        ):
            raise ValueError(
                "a case must expect something: data_class, entities, permits or redaction"
            )
        return self


class Case(Strict):
    name: Name
    description: str = ""
    request: CaseRequest = CaseRequest()
    origin: str = ""  # the site's jurisdiction
    expect: Expectation


class CaseFile(Strict):
    cases: Annotated[tuple[Case, ...], Field(min_length=1)]
