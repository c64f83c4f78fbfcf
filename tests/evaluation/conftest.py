"""Fixtures of the evaluation tests."""
from __future__ import annotations

import pytest
from loguru import logger


class LogCapture:
    def __init__(self) -> None:
        self.messages: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def caplog_loguru():
    """wsi_mil's loguru records (all levels) while the test runs; ``.text`` joins them."""
    capture = LogCapture()
    logger.enable("wsi_mil")
    sink = logger.add(lambda msg: capture.messages.append(str(msg.record["message"])), level="DEBUG")
    yield capture
    logger.remove(sink)
    logger.disable("wsi_mil")
