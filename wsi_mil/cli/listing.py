"""``wsi-mil encoders`` / ``wsi-mil models``: print the registries.

``wsi-mil encoders`` prints one card per encoder: embedding size(s), input size,
preprocessing, precision per device, weights id, licence note and text side.
"""
from __future__ import annotations


def main(what: str) -> int:
    if what == "encoders":
        from wsi_mil.encoders import list_encoders
        from wsi_mil.encoders.cards import format_cards

        print(format_cards(list_encoders()))
        return 0
    from wsi_mil.models import list_models

    print("\n".join(list_models()))
    return 0
