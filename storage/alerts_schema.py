"""The alert engine's tables (migration 6).

- ``alert_rules``: rules as data (the validated rule as JSON); ``alert_rules_version``
  is a one-row counter every change bumps, which running engines poll to reload.
- ``alerts``: one row per alert instance of a (rule, device). ``state`` is the
  lifecycle (pending -> firing -> resolved) and ``acknowledged`` is separate: an
  alert resolved before anyone acknowledged it stays unacknowledged. The partial
  unique index ``alerts_one_open`` makes a second open alert of the same (rule,
  device) impossible, whatever the application does. ``grade`` is China's
  four-level scale: 1 = red I (highest), 2 = orange II, 3 = yellow III, 4 = blue IV.
- ``alert_transitions``: every change of an alert, with who (``actor``: ``engine``
  or an operator), when, the device time and the value that caused it. ``seq``
  numbers an alert's transitions, so ``(alert_id, seq)`` is the idempotency key
  of its notifications. ``published_at`` is set once the transition is on the
  alerts topic (a crash in between re-publishes; consumers dedupe on the key).
- ``alert_incidents``: alerts at one site within a window roll up into one open
  incident per site (partial unique index); ``alerts.incident_id`` names it.
- ``alert_silences``: silence notifications by selector for a time window, with who and why.
- ``alert_device_state``: the engine's per-device evaluation state (every rule's
  pending-since, hysteresis side, window summaries, last uplink) as msgpack,
  with the readings-topic partition that owns the device, written at checkpoints.
- ``alert_outbox``: webhook deliveries, written in the engine's transaction and
  delivered by the outbox worker; ``parked`` rows are visible with their reason.

Tables only grow columns from here on (the API reads them).
"""

from __future__ import annotations

from typing import LiteralString

ALERTS_DDL: tuple[LiteralString, ...] = (
    """CREATE TABLE alert_rules (
            rule_id    text PRIMARY KEY,
            name       text NOT NULL,
            enabled    boolean NOT NULL DEFAULT true,
            definition jsonb NOT NULL,
            source     text NOT NULL DEFAULT '',
            updated_by text NOT NULL DEFAULT '',
            updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE alert_rules_version (
            id      boolean PRIMARY KEY DEFAULT true CHECK (id),
            version bigint NOT NULL)""",
    "INSERT INTO alert_rules_version (id, version) VALUES (true, 0)",
    """CREATE TABLE alert_incidents (
            incident_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            site_id      text NOT NULL,
            state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
            grade        smallint NOT NULL CHECK (grade BETWEEN 1 AND 4),
            first_seen   timestamptz NOT NULL,
            last_seen    timestamptz NOT NULL,
            member_count integer NOT NULL DEFAULT 0,
            acknowledged    boolean NOT NULL DEFAULT false,
            acknowledged_by text,
            acknowledged_at timestamptz,
            closed_at    timestamptz,
            updated_at   timestamptz NOT NULL DEFAULT now())""",
    "CREATE UNIQUE INDEX alert_incidents_one_open ON alert_incidents (site_id) WHERE state = 'open'",
    "CREATE INDEX alert_incidents_recent ON alert_incidents (last_seen DESC)",
    """CREATE TABLE alerts (
            alert_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rule_id      text NOT NULL,
            device_id    text NOT NULL,
            site_id      text,
            condition    text NOT NULL,
            metric       text,
            state        text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
            grade        smallint NOT NULL CHECK (grade BETWEEN 1 AND 4),
            value        double precision,
            acknowledged    boolean NOT NULL DEFAULT false,
            acknowledged_by text,
            acknowledged_at timestamptz,
            flapping     boolean NOT NULL DEFAULT false,
            suppressed   text,
            labels       jsonb NOT NULL DEFAULT '{}',
            incident_id  bigint REFERENCES alert_incidents (incident_id),
            started_at   timestamptz NOT NULL,
            fired_at     timestamptz,
            resolved_at  timestamptz,
            resolved_by  text,
            last_seq     integer NOT NULL DEFAULT 0,
            updated_at   timestamptz NOT NULL DEFAULT now())""",
    "CREATE UNIQUE INDEX alerts_one_open ON alerts (rule_id, device_id) WHERE state <> 'resolved'",
    "CREATE INDEX alerts_device ON alerts (device_id, started_at DESC)",
    "CREATE INDEX alerts_site ON alerts (site_id, started_at DESC)",
    "CREATE INDEX alerts_recent ON alerts (started_at DESC)",
    "CREATE INDEX alerts_open ON alerts (grade, started_at DESC) WHERE state <> 'resolved'",
    "CREATE INDEX alerts_unacked ON alerts (started_at DESC) WHERE NOT acknowledged",
    "CREATE INDEX alerts_incident ON alerts (incident_id) WHERE incident_id IS NOT NULL",
    """CREATE TABLE alert_transitions (
            transition_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alert_id     bigint NOT NULL REFERENCES alerts (alert_id),
            seq          integer NOT NULL,
            action       text NOT NULL,
            from_state   text,
            to_state     text NOT NULL,
            grade        smallint NOT NULL CHECK (grade BETWEEN 1 AND 4),
            acknowledged boolean NOT NULL,
            value        double precision,
            device_time  timestamptz,
            actor        text NOT NULL,
            reason       text NOT NULL DEFAULT '',
            at           timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz,
            UNIQUE (alert_id, seq))""",
    "CREATE INDEX alert_transitions_at ON alert_transitions (at DESC)",
    "CREATE INDEX alert_transitions_unpublished ON alert_transitions (transition_id)"
    " WHERE published_at IS NULL",
    """CREATE TABLE alert_silences (
            silence_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            selector    jsonb NOT NULL,
            starts_at   timestamptz NOT NULL,
            ends_at     timestamptz NOT NULL,
            created_by  text NOT NULL,
            reason      text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expired_at  timestamptz,
            CHECK (ends_at > starts_at))""",
    "CREATE INDEX alert_silences_active ON alert_silences (ends_at) WHERE expired_at IS NULL",
    """CREATE TABLE alert_device_state (
            device_id  text PRIMARY KEY,
            partition  integer NOT NULL,
            last_seen  timestamptz,
            state      bytea NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()) WITH (fillfactor = 70)""",
    "CREATE INDEX alert_device_state_partition ON alert_device_state (partition)",
    """CREATE TABLE alert_outbox (
            outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            receiver        text NOT NULL,
            device_id       text NOT NULL,
            alert_id        bigint REFERENCES alerts (alert_id),
            incident_id     bigint REFERENCES alert_incidents (incident_id),
            idempotency_key text NOT NULL,
            payload         jsonb NOT NULL,
            state           text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'parked')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error      text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            delivered_at    timestamptz,
            parked_at       timestamptz,
            UNIQUE (receiver, idempotency_key))""",
    "CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX alert_outbox_order ON alert_outbox (receiver, device_id, outbox_id)"
    " WHERE state = 'pending'",
    "CREATE INDEX alert_outbox_parked ON alert_outbox (parked_at DESC) WHERE state = 'parked'",
)
