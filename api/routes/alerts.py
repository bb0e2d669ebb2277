"""Alerts and incidents: lists with filters, detail, and the operator's actions."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import AwareDatetime

from api import pagination
from api.alert_models import (
    ActionIn,
    AlertDetail,
    AlertPage,
    IncidentDetail,
    IncidentOut,
    IncidentPage,
    TransitionOut,
)
from api.deps import ConnDep, Cursor, Operator, PageSize, Viewer
from api.errors import ERRORS, NOT_FOUND, not_found, unprocessable
from api.live import GRADES
from api.models import AlertOut
from api.routes import V1
from storage import alerts_store, api_alerts

router = APIRouter(prefix=V1, tags=["alerts"], responses=ERRORS)
Id = Annotated[int, Path(ge=1, le=2**62)]
Text = Annotated[str | None, Query(min_length=1, max_length=200)]
GradeName = Literal["red", "orange", "yellow", "blue"]


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(
    _: Viewer, conn: ConnDep, n: PageSize,
    state: Literal["open", "pending", "firing", "resolved"] | None = None,
    grade: Annotated[GradeName | None, Query(description="this grade or more severe")] = None,
    acknowledged: bool | None = None, site: Text = None, district: Text = None, device: Text = None,
    since: AwareDatetime | None = None, until: AwareDatetime | None = None,
    cursor: Cursor = None,
) -> AlertPage:
    """Alerts newest first; ``state=open`` means pending or firing."""
    if since and until and until <= since:
        raise unprocessable(["query", "until"], "until must be after since")
    f = api_alerts.AlertFilter(
        state=None if state in (None, "open") else state, open_only=state == "open",
        max_grade=GRADES[grade] if grade else None, acknowledged=acknowledged, site_id=site,
        district=district, device_id=device, since=since, until=until)
    before = pagination.decode(cursor, int)
    rows = await api_alerts.list_alerts(conn, f, before_id=before, limit=n)
    nxt = pagination.encode(rows[-1].alert_id) if len(rows) == n else None
    return AlertPage(items=[AlertOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=NOT_FOUND)
async def get_alert(alert_id: Id, _: Viewer, conn: ConnDep) -> AlertDetail:
    """An alert with every transition (who, when, why)."""
    row = await alerts_store.get_alert(conn, alert_id)
    if row is None:
        raise not_found(f"alert {alert_id}")
    transitions = await alerts_store.list_transitions(conn, alert_id)
    return AlertDetail(alert=AlertOut.model_validate(row),
                       transitions=[TransitionOut.model_validate(t) for t in transitions])


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut, responses=NOT_FOUND)
async def acknowledge(alert_id: Id, who: Operator, conn: ConnDep,
                      body: Annotated[ActionIn | None, Body()] = None) -> AlertOut:
    """Acknowledge (operator); acknowledging twice changes nothing."""
    try:
        row = await alerts_store.acknowledge(conn, alert_id, who.actor, body.reason if body else "")
    except alerts_store.AlertNotFoundError:
        raise not_found(f"alert {alert_id}") from None
    return AlertOut.model_validate(row)


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, responses=NOT_FOUND)
async def resolve(alert_id: Id, who: Operator, conn: ConnDep,
                  body: Annotated[ActionIn | None, Body()] = None) -> AlertOut:
    """Resolve an open alert by hand (operator); 404 when no open alert has that id."""
    try:
        row = await alerts_store.resolve(conn, alert_id, who.actor, body.reason if body else "")
    except alerts_store.AlertNotFoundError:
        raise not_found(f"open alert {alert_id}") from None
    return AlertOut.model_validate(row)


@router.get("/incidents", response_model=IncidentPage)
async def list_incidents(
    _: Viewer, conn: ConnDep, n: PageSize, state: Literal["open", "closed"] | None = None,
    site: Text = None, cursor: Cursor = None,
) -> IncidentPage:
    rows = await alerts_store.list_incidents(conn, state=state, site_id=site,
                                             before_id=pagination.decode(cursor, int), limit=n)
    nxt = pagination.encode(rows[-1].incident_id) if len(rows) == n else None
    return IncidentPage(items=[IncidentOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/incidents/{incident_id}", response_model=IncidentDetail, responses=NOT_FOUND)
async def get_incident(incident_id: Id, _: Viewer, conn: ConnDep) -> IncidentDetail:
    row = await alerts_store.get_incident(conn, incident_id)
    if row is None:
        raise not_found(f"incident {incident_id}")
    members = await api_alerts.incident_alerts(conn, incident_id)
    return IncidentDetail(incident=IncidentOut.model_validate(row),
                          alerts=[AlertOut.model_validate(a) for a in members])


@router.post("/incidents/{incident_id}/acknowledge", response_model=IncidentOut, responses=NOT_FOUND)
async def acknowledge_incident(incident_id: Id, who: Operator, conn: ConnDep) -> IncidentOut:
    """Acknowledge an incident and every unacknowledged alert in it (operator)."""
    if await alerts_store.get_incident(conn, incident_id) is None:
        raise not_found(f"incident {incident_id}")
    try:
        row = await alerts_store.acknowledge_incident(conn, incident_id, who.actor)
    except alerts_store.AlertNotFoundError:
        raise not_found(f"incident {incident_id}") from None
    return IncidentOut.model_validate(row)


