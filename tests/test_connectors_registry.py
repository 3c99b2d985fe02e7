"""The connector registry: built-ins come through entry points; a test can build its own registry."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from engine.connector import ConnectorKind, Registry, SystemOptions, default_registry
from engine.errors import Severity
from engine.spec import validate_spec
from tests.conftest import WriteFiles

SPEC = """\
seamline: 1
client: demo
systems:
  pim: { connector: pim, url: "https://pim.example", channel: web }
flows:
  catalog:
    trigger: { schedule: 15m }
    source: { system: pim, read: products }
    target: { system: pim, write: products }
"""


class PimOptions(SystemOptions):
    url: str
    channel: str = Field(description="Publication channel")


PIM = ConnectorKind(
    name="pim",
    options=PimOptions,
    description="A product information system",
    reads=frozenset({"products"}),
    writes=frozenset({"products"}),
    connect=lambda options, context: NotImplemented,  # runnable: the runtime could open it
)


def test_builtin_connectors_register_through_entry_points() -> None:
    registry = default_registry()
    assert registry.names() == ["amqp", "file", "http", "magento", "queue", "salesforce", "tryton"]
    runnable = {kind.name for kind in registry if kind.runnable}
    assert runnable == set(registry.names())  # every built-in kind can run


def test_an_empty_registry_knows_no_connector(write_files: WriteFiles) -> None:
    root = write_files({"seamline.yaml": SPEC})
    report = validate_spec(root / "seamline.yaml", registry=Registry(), environ={})
    errors = [d for d in report.diagnostics if d.severity is Severity.ERROR]
    assert errors[0].message == "unknown connector 'pim'"


def test_a_registered_kind_validates_its_own_options(write_files: WriteFiles) -> None:
    root = write_files({"seamline.yaml": SPEC})
    registry = Registry()
    registry.register(PIM)
    report = validate_spec(root / "seamline.yaml", registry=registry, environ={})
    assert report.ok, [d.render() for d in report.diagnostics]
    assert not any(d.code == "not-runnable" for d in report.diagnostics)

    Path("seamline.yaml").write_text(SPEC.replace("channel: web", "chanel: web"), encoding="utf-8")
    report = validate_spec(Path("seamline.yaml"), registry=registry, environ={})
    messages = [d.message for d in report.diagnostics if d.severity is Severity.ERROR]
    assert "unknown key 'chanel' — did you mean 'channel'?" in messages
    assert "missing required key 'channel' in 'systems.pim'" not in messages  # one mistake, one message


def test_registering_two_kinds_with_one_name_is_refused() -> None:
    registry = Registry()
    registry.register(PIM)
    registry.register(PIM)  # the same object again is harmless
    other = ConnectorKind(name="pim", options=PimOptions, description="another")
    try:
        registry.register(other)
    except ValueError as exc:
        assert "registered twice" in str(exc)
    else:
        raise AssertionError("a second kind named 'pim' was accepted")


def test_http_systems_declare_operations_through_their_endpoints(write_files: WriteFiles) -> None:
    spec = """\
seamline: 1
client: demo
systems:
  erp:
    connector: http
    url: https://erp.example
    endpoints:
      products: { path: /products }
      orders: { path: /orders, method: POST }
flows:
  catalog:
    trigger: { schedule: 15m }
    source: { system: erp, read: orders }
    target: { system: erp, write: products }
"""
    root = write_files({"seamline.yaml": spec})
    report = validate_spec(root / "seamline.yaml", environ={})
    messages = sorted(d.message for d in report.diagnostics if d.severity is Severity.ERROR)
    assert messages == [
        "system 'erp' (http) cannot read 'orders'",
        "system 'erp' (http) cannot write 'products'",
    ]
