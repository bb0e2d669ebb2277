"""Settings of the storage layer (``CITYSENSE_`` prefix).

:class:`StorageSettings` holds what every user of the database needs: the
time-partitioning and retention policy, and the online/offline rule.
:class:`WriterSettings` adds the writer stage's own knobs. Durations accept
seconds or ISO 8601 (``CITYSENSE_CHUNK_INTERVAL=PT6H``).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from citysense.settings import CommonSettings


class StorageSettings(CommonSettings):
    # Width of one chunk (TimescaleDB) or partition (PostgreSQL) of the time-series tables.
    chunk_interval: timedelta = timedelta(days=1)
    # Partitions created ahead of now by maintenance (PostgreSQL path; the writer
    # also creates any partition a batch needs on demand).
    partitions_ahead: int = Field(default=2, ge=0)
    # Raw rows (readings, charger status, health) older than this are dropped.
    retention: timedelta = timedelta(days=90)
    # The hourly rollup outlives raw rows (series with buckets under an hour read raw rows,
    # so they reach back `retention`; hourly ones this long).
    rollup_1h_retention: timedelta = timedelta(days=730)
    # TimescaleDB compresses chunks older than this. It must exceed the longest
    # late-arrival window (NB-IoT devices flush buffered readings hours later).
    compression_after: timedelta = timedelta(days=7)
    late_arrival_window: timedelta = timedelta(days=2)
    # A device is online when heard from within factor x its report interval.
    offline_factor: float = Field(default=3.0, gt=0)
    # How often a writer runs maintenance (partitions ahead, retention); 0 disables.
    maintenance_interval_s: float = Field(default=3600.0, ge=0)
    # How often a writer recomputes dirty rollup buckets (PostgreSQL path); 0 disables.
    # Queries stay exact in between (they read raw rows for dirty buckets), only slower.
    rollup_refresh_interval_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _check_intervals(self) -> StorageSettings:
        if self.chunk_interval < timedelta(minutes=1) or self.chunk_interval % timedelta(minutes=1):
            # whole minutes: the writer finds the partitions a batch needs from its minutes
            raise ValueError("chunk_interval must be a whole number of minutes, at least one")
        if self.compression_after <= self.late_arrival_window:
            raise ValueError(
                "compression_after must be longer than late_arrival_window "
                f"({self.compression_after} <= {self.late_arrival_window})"
            )
        if self.retention <= self.late_arrival_window:
            raise ValueError("retention must be longer than late_arrival_window")
        return self


class WriterSettings(StorageSettings):
    writer_group: str = "citysense-writer"
    writer_max_records: int = Field(default=5000, ge=1)
    # The sink takes one connection per write and one for a checkpoint's flush beside it;
    # maintenance shares the pool and waits for one when both are in use.
    db_pool_size: int = Field(default=4, ge=2)
    # Seconds between checkpoints: device_state is brought up to date and the Kafka offsets
    # of the batches written since are committed. Bounds how stale device_state may be, and
    # how much a crash re-delivers. 0 checkpoints after every batch.
    writer_checkpoint_interval_s: float = Field(default=1.0, ge=0)
