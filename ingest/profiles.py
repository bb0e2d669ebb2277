"""Device profiles: what a kind of device measures, in which units and ranges.

Profiles are data shared by the simulators (to generate plausible values)
and the normaliser (to validate them). The MQTT topic names the kind
(``devices/{kind}/{device_id}/up``); the kind names a profile; the profile
names its payload codec.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.exceptions import UnknownProfileError


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    low: float
    high: float
    typical: float


@dataclass(frozen=True, slots=True)
class Profile:
    kind: str
    codec: str
    network: str
    # The longest a healthy device stays silent: its reporting period (an NB-IoT device's
    # wake-up period; an OCPP pile's HeartbeatInterval). Silence rules and the dashboard's
    # online/late/offline measure against it (the registry copies it per device).
    report_interval_s: float
    metrics: tuple[Metric, ...]
    # NB-IoT (PSM) devices sample every ``sample_interval_s`` and send the
    # buffered samples every ``report_interval_s``; 0 means one sample per report.
    sample_interval_s: float = 0.0
    description: str = ""

    def metric(self, name: str) -> Metric | None:
        for m in self.metrics:
            if m.name == name:
                return m
        return None


AIR_CAT1 = Profile(
    kind="air",
    codec="cat1-json",
    network="lte-cat1",
    report_interval_s=60.0,
    metrics=(
        Metric("pm25", "ug/m3", 0.0, 1000.0, 35.0),
        Metric("pm10", "ug/m3", 0.0, 2000.0, 60.0),
        Metric("no2", "ug/m3", 0.0, 2000.0, 30.0),
        Metric("o3", "ug/m3", 0.0, 1000.0, 80.0),
        Metric("temperature", "degC", -40.0, 70.0, 18.0),
        Metric("humidity", "%RH", 0.0, 100.0, 70.0),
    ),
)

WEATHER_CAT1 = Profile(
    kind="weather", codec="cat1-json", network="lte-cat1", report_interval_s=60.0,
    description="automatic weather station (区域自动站)",
    metrics=(
        Metric("temperature", "degC", -40.0, 70.0, 17.0),
        Metric("humidity", "%RH", 0.0, 100.0, 75.0),
        Metric("pressure_hpa", "hPa", 850.0, 1100.0, 975.0),
        Metric("wind_speed", "m/s", 0.0, 75.0, 1.8),
        Metric("wind_dir_deg", "deg", 0.0, 360.0, 45.0),
        Metric("rain_mm", "mm", 0.0, 200.0, 0.0),
    ),
)

WATER_CAT1 = Profile(
    kind="water", codec="cat1-json", network="lte-cat1", report_interval_s=300.0,
    description="surface-water quality section (地表水监测断面)",
    metrics=(
        Metric("water_temp", "degC", -5.0, 45.0, 18.0),
        Metric("ph", "pH", 0.0, 14.0, 7.6),
        Metric("do_mg_l", "mg/L", 0.0, 25.0, 8.0),
        Metric("turbidity_ntu", "NTU", 0.0, 4000.0, 25.0),
        Metric("codmn_mg_l", "mg/L", 0.0, 100.0, 3.0),
        Metric("nh3n_mg_l", "mg/L", 0.0, 50.0, 0.4),
    ),
)

BRIDGE_SHM = Profile(
    kind="bridge", codec="cat1-json", network="lte-cat1", report_interval_s=60.0,
    description="bridge structural-health monitor (JT/T 1037 tiers; 60 s aggregates)",
    metrics=(
        Metric("crack_width_mm", "mm", 0.0, 10.0, 0.15),
        Metric("deflection_mm", "mm", -500.0, 500.0, 8.0),
        Metric("strain_ue", "ue", -3000.0, 3000.0, 120.0),
        Metric("accel_rms", "m/s2", 0.0, 50.0, 0.02),
        Metric("accel_peak", "m/s2", 0.0, 100.0, 0.08),
        Metric("tilt_deg", "deg", -10.0, 10.0, 0.01),
        Metric("temperature", "degC", -40.0, 80.0, 17.0),
        Metric("wind_speed", "m/s", 0.0, 75.0, 2.0),
    ),
)

ENV_NBIOT = Profile(
    kind="env", codec="nbiot-frame", network="nb-iot", report_interval_s=900.0,
    sample_interval_s=300.0, description="NB-IoT environment station",
    metrics=(
        Metric("pm25", "ug/m3", 0.0, 1000.0, 35.0),
        Metric("pm10", "ug/m3", 0.0, 2000.0, 60.0),
        Metric("o3", "ug/m3", 0.0, 1000.0, 80.0),
        Metric("noise_dba", "dB(A)", 20.0, 140.0, 55.0),
    ),
)

RAIN_NBIOT = Profile(
    kind="rain", codec="nbiot-frame-hex", network="nb-iot", report_interval_s=3600.0,
    sample_interval_s=300.0, description="flash-flood rain point (山洪雨情监测点), hex payload",
    metrics=(
        Metric("rain_mm", "mm", 0.0, 200.0, 0.0),
        Metric("rain_total_mm", "mm", 0.0, 100_000.0, 0.0),
    ),
)

METER_NBIOT = Profile(
    kind="meter", codec="nbiot-frame", network="nb-iot", report_interval_s=14_400.0,
    sample_interval_s=3600.0, description="multi-utility meter 多表合一 (registers)",
    metrics=(
        Metric("water_m3", "m3", 0.0, 1_000_000.0, 0.0),
        Metric("gas_m3", "m3", 0.0, 1_000_000.0, 0.0),
        Metric("heat_gj", "GJ", 0.0, 1_000_000.0, 0.0),
        Metric("power_kwh", "kWh", 0.0, 10_000_000.0, 0.0),
    ),
)

_CHARGER_BASE = (
    Metric("power_kw", "kW", 0.0, 400.0, 7.0),
    Metric("energy_kwh", "kWh", 0.0, 10_000_000.0, 0.0),
    Metric("voltage_v", "V", 0.0, 1000.0, 230.0),
    Metric("current_a", "A", 0.0, 600.0, 32.0),
    Metric("soc_pct", "%", 0.0, 100.0, 50.0),
)
# OCPP 1.6 phases (L1, L2, L3, N, L1-N, L2-N, L3-N, L1-L2, L2-L3, L3-L1), one metric each.
_PHASE_SUFFIXES = ("l1", "n", "l2", "l3", "l1_n", "l2_n", "l3_n", "l1_l2", "l2_l3", "l3_l1")

CHARGER_OCPP = Profile(
    kind="charger", codec="charger-ocpp", network="lte-cat1", report_interval_s=300.0,
    # An idle pile sends only its Heartbeat (simulators/charger.py uses this interval); meter
    # values every 60 s come only while charging, so they cannot be what silence expects.
    description="EV charge pile, OCPP 1.6 JSON (HeartbeatInterval 300 s; MeterValueSampleInterval "
                "60 s while charging)",
    metrics=(
        *_CHARGER_BASE,
        Metric("energy_export_kwh", "kWh", 0.0, 10_000_000.0, 0.0),
        Metric("power_export_kw", "kW", 0.0, 400.0, 0.0),
        Metric("power_offered_kw", "kW", 0.0, 400.0, 7.0),
        Metric("current_export_a", "A", 0.0, 600.0, 0.0),
        Metric("current_offered_a", "A", 0.0, 600.0, 32.0),
        Metric("temperature", "degC", -40.0, 120.0, 25.0),
        Metric("frequency_hz", "Hz", 40.0, 70.0, 50.0),
        Metric("power_factor", "", -1.0, 1.0, 0.98),
        *(Metric(f"{m.name}_{p}", m.unit, m.low, m.high, m.typical)
          for m in _CHARGER_BASE if m.name != "soc_pct" for p in _PHASE_SUFFIXES),
    ),
)

PROFILES: dict[str, Profile] = {
    p.kind: p
    for p in (AIR_CAT1, WEATHER_CAT1, WATER_CAT1, BRIDGE_SHM, ENV_NBIOT, RAIN_NBIOT,
              METER_NBIOT, CHARGER_OCPP)
}


def profile_for(kind: str) -> Profile:
    try:
        return PROFILES[kind]
    except KeyError:
        raise UnknownProfileError(f"no device profile for kind {kind!r}") from None
