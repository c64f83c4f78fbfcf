"""``wsi-mil encoders`` / ``wsi-mil models``: print the registries."""
from __future__ import annotations


def main(what: str) -> int:
    if what == "encoders":
        from wsi_mil.encoders import list_encoders

        names = list_encoders()
    else:
        from wsi_mil.models import list_models

        names = list_models()
    print("\n".join(names))
    return 0
