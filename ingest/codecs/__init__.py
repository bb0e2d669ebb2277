"""Payload codecs, one per profile family.

``encode`` is for simulators, ``decode`` for the normaliser.
"""

from __future__ import annotations

from ingest.codecs.base import Codec, DecodeError
from ingest.codecs.cat1_json import Cat1JsonCodec
from ingest.codecs.charger_ocpp import ChargerOcppCodec
from ingest.codecs.nbiot_frame import NbiotFrameCodec
from ingest.exceptions import UnknownProfileError

CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Cat1JsonCodec(), NbiotFrameCodec(), NbiotFrameCodec(hex_text=True), ChargerOcppCodec(),
    )
}


def codec_named(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise UnknownProfileError(f"no codec named {name!r}") from None


__all__ = ["CODECS", "Codec", "DecodeError", "codec_named"]
