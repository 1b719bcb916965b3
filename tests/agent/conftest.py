"""Real peers for the agent tests: kamailio and sipp on 127.0.0.1, stopped by pid.

`sipp_uas(name)` starts a sipp UAS running scenarios/<name>; `kamailio_for(routes,
extensions, **options)` starts a kamailio routing number prefixes to those UASes
(options: other `KamailioConfig` fields). Every process a test starts is stopped
in the fixture's teardown, also on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from sipclient.lab.kamailio import Kamailio, KamailioConfig, Route
from sipclient.lab.sipp import Sipp

EXTENSIONS = {"1001": "secret1001", "1002": "secret1002", "1003": "secret1003"}


@pytest.fixture
def sipp_uas() -> Iterator[Callable[..., Sipp]]:
    started: list[Sipp] = []

    def start(scenario: str, **kwargs: object) -> Sipp:
        sipp = Sipp(scenario, **kwargs)  # type: ignore[arg-type]
        started.append(sipp)
        return sipp.start()

    yield start
    for sipp in started:
        sipp.cleanup()


@pytest.fixture
def kamailio_for() -> Iterator[Callable[..., Kamailio]]:
    started: list[Kamailio] = []

    def start(
        routes: Sequence[Route] = (),
        extensions: Mapping[str, str] = EXTENSIONS,
        **options: Any,
    ) -> Kamailio:
        kam = Kamailio(config=KamailioConfig(extensions=dict(extensions), routes=routes, **options))
        started.append(kam)
        return kam.start()

    yield start
    for kam in started:
        kam.cleanup()
