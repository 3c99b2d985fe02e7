"""The fake Magento 2.4.8 REST API: its schema subset, routes, validation, auth, bulk and fault knobs.

Everything goes over real HTTP on loopback with a plain synchronous httpx client.
"""

from __future__ import annotations

import json

import pytest

from connectors.magento import derive_schema


def test_committed_schema_subset_is_what_the_generator_derives() -> None:
    if not derive_schema.REFERENCE.exists():
        pytest.skip(f"reference schema absent: {derive_schema.REFERENCE} (it sits beside the repo in CI)")
    full = json.loads(derive_schema.REFERENCE.read_text(encoding="utf-8"))
    assert derive_schema.SUBSET.read_text(encoding="utf-8") == derive_schema.render(full)
    subset = json.loads(derive_schema.SUBSET.read_text(encoding="utf-8"))
    assert subset["origin"]["commit"] == "e2275b5623d47d248df025a9e2a276162e551699"
    for name in derive_schema.ROOTS:
        assert name in subset["definitions"]
