"""The demo: the reference client (``specs/demo``) run end to end on this machine; not part of the engine.

A real Tryton ERP, the Magento and Salesforce contract fakes and the daemon, all on loopback, with sample
traffic through every flow (:mod:`seamline_demo.scenario`). ``seamline demo`` runs it; ``tests/e2e`` use
its steps. It lives beside the engine, not in it: the engine names no connector, the demo names three.
"""

from seamline_demo.scenario import (
    DemoReport,
    DemoSystems,
    DemoUnavailable,
    FlowResult,
    count_stock,
    run_demo,
    run_scenario,
    wait_until,
)

__all__ = [
    "DemoReport",
    "DemoSystems",
    "DemoUnavailable",
    "FlowResult",
    "count_stock",
    "run_demo",
    "run_scenario",
    "wait_until",
]
