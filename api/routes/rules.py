"""Alert rules: everyone may read them; admins validate, create, update, disable and enable.

A rule body is the rule file's format (``alerts.rules.Rule``) as JSON, with the
receivers it names; it is validated exactly as ``citysense rules validate`` does.
Every change bumps the rules version, which running engines poll to reload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alerts.rules import Receiver, Rule, cross_check, stored_definition
from api.deps import Admin, ConnDep, Viewer
from api.errors import ERRORS, NOT_FOUND, ErrorBody, not_found
from api.routes import V1
from storage import alert_rules_store

router = APIRouter(prefix=f"{V1}/rules", tags=["rules"], responses=ERRORS)
RuleId = Annotated[str, Path(min_length=1, max_length=100)]


class RuleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    rule_id: str
    name: str
    enabled: bool
    source: str
    updated_by: str
    updated_at: datetime
    definition: dict[str, Any]


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: dict[str, Any] = Field(description="one rule in the rule file's format")
    receivers: list[dict[str, Any]] = Field(default_factory=list, max_length=50,
                                            description="the receivers the rule names")


class Problem(BaseModel):
    loc: list[str | int]
    msg: str


class Validation(BaseModel):
    valid: bool
    problems: list[Problem]


def _check(body: RuleIn) -> tuple[Rule | None, list[Receiver], list[Problem]]:
    problems: list[Problem] = []
    receivers: list[Receiver] = []
    for i, spec in enumerate(body.receivers):
        try:
            receivers.append(Receiver.model_validate(spec))
        except ValidationError as exc:
            problems += [Problem(loc=["receivers", i, *e["loc"]], msg=e["msg"]) for e in exc.errors()]
    try:
        rule = Rule.model_validate(body.rule)
    except ValidationError as exc:
        problems += [Problem(loc=["rule", *e["loc"]], msg=e["msg"]) for e in exc.errors()]
        return None, receivers, problems
    problems += [Problem(loc=["rule", *loc[2:]], msg=msg) for loc, msg in cross_check([(0, rule)], receivers)]
    return rule, receivers, problems


def _valid(body: RuleIn) -> tuple[Rule, list[Receiver]]:
    rule, receivers, problems = _check(body)
    if problems or rule is None:
        raise HTTPException(422, detail=[{"loc": ["body", *p.loc], "msg": p.msg, "type": "value_error"}
                                         for p in problems])
    return rule, receivers


@router.get("", response_model=list[RuleOut])
async def list_rules(_: Viewer, conn: ConnDep) -> list[RuleOut]:
    return [RuleOut.model_validate(r) for r in await alert_rules_store.list_rules(conn)]


@router.get("/{rule_id}", response_model=RuleOut, responses=NOT_FOUND)
async def get_rule(rule_id: RuleId, _: Viewer, conn: ConnDep) -> RuleOut:
    row = await alert_rules_store.get_rule(conn, rule_id)
    if row is None:
        raise not_found(f"rule {rule_id!r}")
    return RuleOut.model_validate(row)


@router.post("/validate", response_model=Validation)
async def validate(body: RuleIn, _: Admin) -> Validation:
    """Check a rule without storing it: every problem, with where it is."""
    problems = _check(body)[2]
    return Validation(valid=not problems, problems=problems)


@router.post("", response_model=RuleOut, status_code=201,
             responses={409: {"model": ErrorBody, "description": "a rule with that id exists"}})
async def create_rule(body: RuleIn, who: Admin, conn: ConnDep) -> RuleOut:
    rule, receivers = _valid(body)
    if await alert_rules_store.get_rule(conn, rule.id) is not None:
        raise HTTPException(409, detail=f"rule {rule.id!r} exists; PUT /rules/{rule.id} to change it")
    return await _store(conn, rule, receivers, who.actor)


@router.put("/{rule_id}", response_model=RuleOut, responses=NOT_FOUND)
async def update_rule(rule_id: RuleId, body: RuleIn, who: Admin, conn: ConnDep) -> RuleOut:
    rule, receivers = _valid(body)
    if rule.id != rule_id:
        raise HTTPException(422, detail=[{"loc": ["body", "rule", "id"], "type": "value_error",
                                          "msg": f"the rule's id {rule.id!r} is not {rule_id!r} "
                                                 "of the path"}])
    if await alert_rules_store.get_rule(conn, rule_id) is None:
        raise not_found(f"rule {rule_id!r}")
    return await _store(conn, rule, receivers, who.actor)


async def _store(conn: ConnDep, rule: Rule, receivers: list[Receiver], actor: str) -> RuleOut:
    row_in = (rule.id, rule.name, rule.enabled, stored_definition(rule, receivers))
    await alert_rules_store.upsert_rules(conn, [row_in], source="api", actor=actor)
    row = await alert_rules_store.get_rule(conn, rule.id)
    assert row is not None
    return RuleOut.model_validate(row)


async def _enable(conn: ConnDep, rule_id: str, enabled: bool, actor: str) -> RuleOut:
    if not await alert_rules_store.set_rule_enabled(conn, rule_id, enabled, actor):
        raise not_found(f"rule {rule_id!r}")
    row = await alert_rules_store.get_rule(conn, rule_id)
    assert row is not None
    return RuleOut.model_validate(row)


@router.post("/{rule_id}/disable", response_model=RuleOut, responses=NOT_FOUND)
async def disable_rule(rule_id: RuleId, who: Admin, conn: ConnDep) -> RuleOut:
    return await _enable(conn, rule_id, False, who.actor)


@router.post("/{rule_id}/enable", response_model=RuleOut, responses=NOT_FOUND)
async def enable_rule(rule_id: RuleId, who: Admin, conn: ConnDep) -> RuleOut:
    return await _enable(conn, rule_id, True, who.actor)
