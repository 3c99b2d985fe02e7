"""`run --once` (summary, dry run, a failing source), operator commands, and request triggers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.cli import main
from engine.state import NewItem, open_store
from tests.runtime.harness import DaemonProcess

SPEC = """\
seamline: 1
client: oncetest
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    limits: { rate: 50/s, concurrency: 1, timeout: 1s }
    endpoints:
      products: { path: /products, pagination: { style: page, page_size: 10 } }
      price: { path: /price, method: POST }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: "0 3 * * *" }
    source: { system: erp, read: products, cursor: changed, id: Product }
    transform: '{ "sku": Product, "name": $uppercase(name) }'
    target: { system: shop, write: products, key: sku }
  price:
    trigger: { request: { path: /price, timeout: 500ms, cache: 60s } }
    source: { system: erp, call: price }
    transform: '{ "sku": sku, "price": $round(net * 1.0, 2) }'
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed(
            "/products",
            [
                {"id": f"P{i}", "Product": f"P{i}", "name": f"valve {i}", "changed": f"2025-01-0{1 + i % 3}"}
                for i in range(25)
            ],
        )
        (tmp_path / "seamline.yaml").write_text(SPEC, encoding="utf-8")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        yield tmp_path, erp, shop, env


def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def cursor_shown(output: str, flow: str) -> str:
    """The cursor `seamline state show` shows for ``flow``: the last column of the flow's row."""
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [flow])[-1]


def test_run_once_reads_delivers_and_summarises(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, shop, env = setup
    state = ["--state", f"sqlite:///{root / 'state.db'}"]
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    assert shop.applied_count("/products/") == 25
    assert shop.resource("/products/P7") == {"sku": "P7", "name": "VALVE 7"}
    row = next(line for line in output.splitlines() if "catalog" in line and "│" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:8] == ["catalog", "25", "25", "25", "0", "0", "0", "0"], output
    # the progress lines stay on screen once done: what was read, and the delivery bar at its end
    assert "read catalog: 25 records" in output and "delivering" in output and "25/25" in output, output

    # a second pass re-reads from the cursor minus the overlap: nothing new, nothing written twice
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0 and shop.applied_count("/products/") == 25

    code, output = cli("runs", str(root), *state, env=env)
    assert code == 0 and output.count("schedule") == 2 and "read=25" in output
    code, output = cli("state", "show", str(root), *state, env=env)
    assert cursor_shown(output, "catalog") == "2025-01-03" and "deliveries=25" in output
    code, output = cli("state", "reset-cursor", str(root), "--flow", "catalog", *state, env=env)
    assert output.strip() == "cursor catalog: 2025-01-03 -> None"


def test_dry_run_writes_nothing(setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]]) -> None:
    root, _erp, shop, env = setup
    code, output = cli("run", str(root), "--once", "--dry-run", "--state", f"sqlite:///{root / 's.db'}", env=env)
    assert code == 0, output
    assert shop.writes() == []
    assert 'catalog -> shop.products: {"sku": "P3", "name": "VALVE 3"}' in output
    assert "nothing was written" in output
    assert not (root / "s.db").exists()


def test_a_failing_source_fails_the_once_run(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    erp.configure(error_rate=1.0, error_status=503)
    code, output = cli("run", str(root), "--once", "--state", f"sqlite:///{root / 'state.db'}", env=env)
    assert code == 1
    assert "catalog: reading the source failed" in output and "503" in output


def _price_route(calls: list[float], delay: float = 0.0) -> Any:
    def answer(request: FakeRequest) -> FakeResponse:
        calls.append(time.monotonic())
        time.sleep(delay)
        body = request.json() or {}
        return FakeResponse(200, {"sku": body.get("sku"), "net": 12.345})

    return answer


def test_request_trigger_answers_caches_and_fails_clearly(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    calls: list[float] = []
    erp.route("POST", "/price", _price_route(calls))
    daemon = DaemonProcess(root, root / "state.db", env=env)
    try:
        daemon.start()
        first = httpx.post(f"{daemon.url}/price", json={"sku": "P1", "customer": "C9"})
        assert first.status_code == 200 and first.json() == {"sku": "P1", "price": 12.34}  # JSONata rounds half to even
        assert first.headers["X-Seamline-Cache"] == "miss"
        second = httpx.post(f"{daemon.url}/price", json={"customer": "C9", "sku": "P1"})  # same request
        assert second.headers["X-Seamline-Cache"] == "hit" and len(calls) == 1

        erp.route("POST", "/price", _price_route(calls, delay=1.0))  # slower than the 500ms budget
        slow = httpx.post(f"{daemon.url}/price", json={"sku": "P2"}, timeout=5)
        assert slow.status_code == 504 and "within 0.5s" in slow.json()["error"]

        erp.route("POST", "/price", lambda _r: FakeResponse(503, {"message": "down"}, {"Retry-After": "7"}))
        down = httpx.post(f"{daemon.url}/price", json={"sku": "P3"})
        assert down.status_code == 503 and down.headers["Retry-After"] == "7"
        for i in range(6):  # enough failures to open the breaker
            httpx.post(f"{daemon.url}/price", json={"sku": f"X{i}"})
        opened = httpx.post(f"{daemon.url}/price", json={"sku": "P4"})
        assert opened.status_code == 503 and "circuit open" in opened.json()["error"]
        assert int(opened.headers["Retry-After"]) >= 1
        assert httpx.post(f"{daemon.url}/price", json={"sku": "P1", "customer": "C9"}).status_code == 200  # cached
    finally:
        daemon.stop()


def test_a_payload_that_fails_the_targets_schema_never_leaves(tmp_path: Path) -> None:
    spec = SPEC.replace(
        '      products: { path: "/products/{sku}", method: PUT }',
        "      products:\n"
        '        path: "/products/{sku}"\n'
        "        method: PUT\n"
        "        schema: { type: object, required: [sku, name], properties: { name: { type: string, minLength: 3 } } }",
    )
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed(
            "/products", [{"id": "A", "Product": "A", "name": "ok valve"}, {"id": "B", "Product": "B", "name": "x"}]
        )
        (tmp_path / "seamline.yaml").write_text(spec, encoding="utf-8")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        state = ["--state", f"sqlite:///{tmp_path / 'state.db'}"]
        code, output = cli("run", str(tmp_path), "--once", *state, env=env)
        assert code == 1, output  # a dead letter makes the pass fail
        assert [w["path"] for w in shop.writes()] == ["/products/A"]
        code, output = cli("dlq", "list", str(tmp_path), *state, env=env)
        assert "fails shop.products's schema at $.name" in output and "1 dead letter(s)" in output


def test_discontinued_ignore_leaves_records_the_source_marks_discontinued_unwritten(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, shop, env = setup
    erp.reset()
    erp.seed(
        "/products",
        [
            {"id": "P1", "Product": "P1", "name": "valve", "changed": "2025-01-01", "discontinued": False},
            {"id": "P2", "Product": "P2", "name": "old valve", "changed": "2025-01-01", "discontinued": True},
            {"id": "P3", "Product": "P3", "name": "pump", "changed": "2025-01-01"},
        ],
    )
    spec = (root / "seamline.yaml").read_text(encoding="utf-8")
    spec = spec.replace(
        "    target: { system: shop, write: products, key: sku }\n",
        "    target: { system: shop, write: products, key: sku }\n    discontinued: ignore\n",
        1,
    )
    (root / "seamline.yaml").write_text(spec, encoding="utf-8")
    code, output = cli(
        "run", str(root), "--once", "--flow", "catalog", "--state", f"sqlite:///{root / 's.db'}", env=env
    )
    assert code == 0, output
    assert sorted(w["path"] for w in shop.writes("/products/")) == ["/products/P1", "/products/P3"]


def test_state_prune_deletes_what_was_delivered_and_refuses_a_bad_duration(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, _shop, env = setup
    state = ["--state", f"sqlite:///{root / 'prune.db'}"]
    code, output = cli("run", str(root), "--once", "--flow", "catalog", *state, env=env)
    assert code == 0, output
    code, output = cli("state", "prune", str(root), *state, env=env)  # the spec's 30 days: nothing is that old
    assert code == 0 and "inbox 0" in output, output
    code, output = cli("state", "prune", str(root), "--older-than", "0s", *state, env=env)
    assert code == 0, output
    assert "inbox 25" in output and "ledger 25" in output and "runs 1" in output, output
    code, output = cli("state", "prune", str(root), "--older-than", "soon", *state, env=env)
    assert code == 2 and "--older-than" in output


def test_dlq_replay_skips_a_superseded_letter_and_says_how_to_force_it(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, _shop, env = setup
    url = f"sqlite:///{root / 'replay.db'}"
    store = open_store(url)
    store.enqueue([NewItem("catalog", "v1", "P1", {"Product": "P1"}, "t")])
    (old,) = store.claim("w", 10, lease=30)
    store.dead_letter(old.id, "bad", error_kind="terminal")
    store.enqueue([NewItem("catalog", "v2", "P1", {"Product": "P1"}, "t")])
    (new,) = store.claim("w", 10, lease=30)
    store.complete(new.id)
    (letter,) = store.dead_letters("catalog")
    store.close()
    code, output = cli("dlq", "replay", str(root), "--flow", "catalog", "--state", url, env=env)
    assert code == 0, output
    assert "replayed 0 dead letter(s)" in output
    assert f"skipped 1 superseded (a newer change of the same record was delivered since): {letter.id}" in output
    code, output = cli("dlq", "replay", str(root), "--flow", "catalog", "--force", "--state", url, env=env)
    assert "replayed 1 dead letter(s)" in output and "skipped" not in output


def test_a_request_transform_lets_the_caller_ask_in_its_own_terms(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    spec = (root / "seamline.yaml").read_text(encoding="utf-8")
    spec = spec.replace(
        "    trigger: { request: { path: /price, timeout: 500ms, cache: 60s } }\n",
        "    trigger:\n"
        "      request:\n"
        "        path: /price\n"
        "        timeout: 500ms\n"
        '        transform: \'{ "sku": $uppercase(item.sku), "customer": buyer.email }\'\n',
    )
    (root / "seamline.yaml").write_text(spec, encoding="utf-8")
    asked: list[Any] = []

    def answer(request: FakeRequest) -> FakeResponse:
        asked.append(request.json())
        return FakeResponse(200, {"sku": request.json()["sku"], "net": 3.0})

    erp.route("POST", "/price", answer)
    daemon = DaemonProcess(root, root / "state.db", env=env)
    try:
        daemon.start()
        shop_shaped = {"item": {"sku": "p1", "qty": 2}, "buyer": {"email": "a@b.example"}}
        priced = httpx.post(f"{daemon.url}/price", json=shop_shaped)
        assert priced.status_code == 200 and priced.json() == {"sku": "P1", "price": 3}
        assert asked == [{"sku": "P1", "customer": "a@b.example"}]
        unshapable = httpx.post(f"{daemon.url}/price", json={"item": {"sku": 42}})
        assert unshapable.status_code == 400
        assert "the request cannot be shaped for the source" in unshapable.json()["error"]
        assert "$uppercase" in unshapable.json()["error"] or "T0410" in unshapable.json()["error"]
        assert len(asked) == 1  # nothing reached the ERP for it
    finally:
        daemon.stop()


Setup = tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]]


def _use_spec(root: Path, old: str, new: str) -> None:
    spec = (root / "seamline.yaml").read_text(encoding="utf-8")
    assert old in spec, old
    (root / "seamline.yaml").write_text(spec.replace(old, new, 1), encoding="utf-8")


def _puts(server: FakeHttpServer, path: str = "/products/") -> list[tuple[str, int | None]]:
    """Every PUT the server received, in order, with its status: duplicates and refusals included."""
    return [(r["path"], r["status"]) for r in server.requests() if r["method"] == "PUT" and r["path"].startswith(path)]


def test_a_schedule_with_backfill_from_starts_its_first_pass_at_that_date(setup: Setup) -> None:
    root, erp, shop, env = setup
    erp.reset()
    erp.seed(
        "/products",
        [
            {"id": "OLD1", "Product": "OLD1", "name": "a", "changed": "2025-01-01T09:00:00Z"},
            {"id": "OLD2", "Product": "OLD2", "name": "b", "changed": "2025-01-02T23:00:00Z"},
            # within the overlap window of the date: the overlap re-reads what a pass read, and before the
            # first pass nothing was read, so it must not widen the backfill
            {"id": "EVE", "Product": "EVE", "name": "e", "changed": "2025-01-02T23:59:30Z"},
            {"id": "NEW1", "Product": "NEW1", "name": "c", "changed": "2025-01-03T00:00:00Z"},
            {"id": "NEW2", "Product": "NEW2", "name": "d", "changed": "2025-01-04T12:30:00Z"},
        ],
    )
    _use_spec(
        root,
        '    trigger: { schedule: "0 3 * * *" }\n',
        '    trigger: { schedule: { cron: "0 3 * * *", backfill_from: 2025-01-03 } }\n',
    )
    state = ["--state", f"sqlite:///{root / 'state.db'}"]
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    assert sorted(path for path, _status in _puts(shop)) == ["/products/NEW1", "/products/NEW2"]
    code, output = cli("state", "show", str(root), *state, env=env)
    assert cursor_shown(output, "catalog") == "2025-01-04T12:30:00Z", output


def test_a_record_changed_in_the_cursors_second_is_written_once_and_the_re_read_ones_are_not_rewritten(
    setup: Setup,
) -> None:
    root, erp, shop, env = setup
    erp.reset()
    # all within one minute: the second pass's overlap window re-reads every one of them
    erp.seed(
        "/products",
        [
            {"id": f"P{i}", "Product": f"P{i}", "name": f"valve {i}", "changed": f"2025-03-01T10:00:0{i}Z"}
            for i in range(5)
        ],
    )
    state = ["--state", f"sqlite:///{root / 'state.db'}"]
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    assert len(_puts(shop)) == 5
    code, output = cli("state", "show", str(root), *state, env=env)
    assert cursor_shown(output, "catalog") == "2025-03-01T10:00:04Z", output

    # changed in the very second the cursor stands at, after the first pass read that second
    erp.seed("/products", [{"id": "LATE", "Product": "LATE", "name": "late", "changed": "2025-03-01T10:00:04Z"}])
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    # every request the target saw, not only the applied ones: an idempotent replay would also show here
    assert _puts(shop)[5:] == [("/products/LATE", 201)], _puts(shop)
    assert shop.resource("/products/LATE") == {"sku": "LATE", "name": "LATE"}
    code, output = cli("runs", str(root), "--flow", "catalog", *state, env=env)
    assert "new=1 pages=1 read=6" in output, output  # all six were read again; their keys kept five out


def _price_only_spec(trigger: str) -> str:
    """SPEC with only its request flow (no schedule pass competes for the ERP's one slot), under ``trigger``."""
    head, rest = SPEC.split("  catalog:\n")
    price = "  price:\n" + rest.split("  price:\n")[1]
    old = "{ path: /price, timeout: 500ms, cache: 60s }"
    assert old in price
    return head + price.replace(old, trigger)


def test_a_request_over_its_systems_concurrency_is_refused_at_once_while_the_first_is_still_answered(
    setup: Setup,
) -> None:
    root, erp, _shop, env = setup
    (root / "seamline.yaml").write_text(_price_only_spec("{ path: /price, timeout: 10s }"), encoding="utf-8")
    entered, release = threading.Event(), threading.Event()
    asked: list[Any] = []

    def slow(request: FakeRequest) -> FakeResponse:
        asked.append(request.json())
        entered.set()
        release.wait(20)  # the ERP holds the first call (and erp's one slot) until the test lets it go
        return FakeResponse(200, {"sku": request.json()["sku"], "net": 5.0})

    erp.route("POST", "/price", slow)
    daemon = DaemonProcess(root, root / "state.db", env=env)
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{daemon.url}/price", json={"sku": "P1"}, timeout=30))
    )
    try:
        daemon.start()
        first.start()
        assert entered.wait(10), "the first request never reached the ERP"
        # the first is still in the ERP: a second one waiting for the slot would hang until released
        try:
            second = httpx.post(f"{daemon.url}/price", json={"sku": "P2"}, timeout=5)
        except httpx.TimeoutException:
            pytest.fail("the second request waited for the first one's slot instead of being refused")
        assert not release.is_set() and not answers
        assert second.status_code == 503, second.text
        assert second.headers["Retry-After"] == "1"
        assert second.json() == {"error": "the system is over its request budget"}
        release.set()
        first.join(30)
        assert [a.status_code for a in answers] == [200] and answers[0].json() == {"sku": "P1", "price": 5}
        assert asked == [{"sku": "P1"}]  # the refused one never reached the ERP
    finally:
        release.set()
        if first.is_alive():
            first.join(30)
        daemon.stop()


def test_dlq_replay_by_id_puts_back_only_that_letter_and_it_is_delivered_once_after_the_fix(setup: Setup) -> None:
    root, erp, shop, env = setup
    erp.reset()
    erp.seed(
        "/products",
        [{"id": k, "Product": k, "name": f"valve {k}", "changed": "2025-01-01"} for k in ("A", "B", "C")],
    )
    broken = {"/products/A", "/products/B"}  # the shop refuses these two until "fixed"

    def refuse(request: FakeRequest) -> FakeResponse | None:
        if request.method == "PUT" and request.path in broken:
            return FakeResponse(422, {"message": "attribute set missing"})
        return None

    shop.intercept = refuse
    url = f"sqlite:///{root / 'state.db'}"
    code, output = cli("run", str(root), "--once", "--state", url, env=env)
    assert code == 1, output  # two dead letters fail the pass
    store = open_store(url)
    letters = {letter.business_key: letter.id for letter in store.dead_letters("catalog")}
    store.close()
    assert sorted(letters) == ["A", "B"]

    broken.clear()
    code, output = cli("dlq", "replay", str(root), "--id", str(letters["A"]), "--state", url, env=env)
    assert code == 0 and "replayed 1 dead letter(s)" in output, output
    code, output = cli("dlq", "list", str(root), "--state", url, env=env)
    assert "B@2025-01-01" in output and "A@2025-01-01" not in output and "1 dead letter(s)" in output, output

    code, output = cli("run", str(root), "--once", "--state", url, env=env)
    assert code == 0, output
    assert _puts(shop, "/products/A") == [("/products/A", 422), ("/products/A", 201)]
    assert _puts(shop, "/products/B") == [("/products/B", 422)]  # still a dead letter, never sent again
    assert _puts(shop, "/products/C") == [("/products/C", 201)]


STATE_BLOCK = 'state: { url: "sqlite:///{{ env.STATE_DIR }}/from-spec.db" }\n'


def test_the_state_url_is_the_state_option_else_the_environment_else_the_spec_else_the_default(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _erp, _shop, env = setup
    monkeypatch.chdir(root.parent)  # the default, .seamline/<client>.db, is beside the spec wherever one runs
    spec_db, env_db, flag_db = root / "from-spec.db", root / "from-env.db", root / "from-flag.db"
    base: dict[str, str | None] = {**env, "STATE_DIR": str(root), "SEAMLINE_STATE_URL": None}

    def shown(*extra: str, **environ: str | None) -> str:
        result = CliRunner().invoke(main, ["state", "show", str(root), *extra], env={**base, **environ})
        assert result.exit_code == 0, result.output
        return result.output.splitlines()[0]

    # no state block in the spec: the embedded default beside the spec file
    default = root / ".seamline" / "oncetest.db"
    for made in (default, spec_db, env_db, flag_db):
        open_store(f"sqlite:///{made}").close()  # a read-only command only reads a store that is there
    assert shown() == f"state: sqlite:///{default}"
    assert shown(SEAMLINE_STATE_URL=f"sqlite:///{env_db}") == f"state: sqlite:///{env_db}"

    _use_spec(root, "flows:\n", STATE_BLOCK + "flows:\n")
    assert shown() == f"state: sqlite:///{spec_db}"  # the spec's url, its template rendered
    assert shown(SEAMLINE_STATE_URL=f"sqlite:///{env_db}") == f"state: sqlite:///{env_db}"
    assert shown("--state", f"sqlite:///{flag_db}", SEAMLINE_STATE_URL=f"sqlite:///{env_db}") == (
        f"state: sqlite:///{flag_db}"
    )

    # and a run keeps its state where the operator commands look for it
    for path in (spec_db, env_db, flag_db):
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
    with_env = {**base, "SEAMLINE_STATE_URL": f"sqlite:///{env_db}"}
    result = CliRunner().invoke(main, ["run", str(root), "--once"], env=with_env)
    assert result.exit_code == 0, result.output
    assert env_db.exists() and not spec_db.exists()
    result = CliRunner().invoke(main, ["run", str(root), "--once"], env=base)
    assert result.exit_code == 0, result.output
    for path in (env_db, spec_db):
        store = open_store(f"sqlite:///{path}")
        try:
            assert store.deliveries() == 25 and store.get_cursor("catalog") == "2025-01-03", path
        finally:
            store.close()


def test_reset_cursor_to_a_value_makes_the_next_pass_re_read_from_there(setup: Setup) -> None:
    root, erp, shop, env = setup
    state = ["--state", f"sqlite:///{root / 'state.db'}"]
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0 and shop.applied_count("/products/") == 25, output

    # a record that shows up late with an old change date: behind the cursor, so a normal pass misses it
    erp.seed("/products", [{"id": "LATE", "Product": "LATE", "name": "late", "changed": "2025-01-02"}])
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0 and shop.resource("/products/LATE") is None, output

    code, output = cli("state", "reset-cursor", str(root), "--flow", "catalog", "--to", "2025-01-02", *state, env=env)
    assert code == 0 and output.strip() == "cursor catalog: 2025-01-03 -> 2025-01-02", output
    code, output = cli("state", "show", str(root), *state, env=env)
    assert cursor_shown(output, "catalog") == "2025-01-02", output

    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    reads = [r["query"] for r in erp.requests() if r["method"] == "GET" and r["path"] == "/products"]
    assert ("changed_gte", "2025-01-01T23:59:00") in reads[-1]  # from the value set, less the 60s overlap
    assert shop.resource("/products/LATE") == {"sku": "LATE", "name": "LATE"}
    assert shop.applied_count("/products/") == 26  # the 16 records re-read since 2025-01-02 are not written again
    code, output = cli("runs", str(root), "--flow", "catalog", "--limit", "1", *state, env=env)
    assert "new=1 pages=2 read=17" in output, output
    code, output = cli("state", "show", str(root), *state, env=env)
    assert cursor_shown(output, "catalog") == "2025-01-03", output


def test_a_request_triggers_cache_entry_expires_after_its_ttl_and_the_source_is_asked_again(setup: Setup) -> None:
    root, erp, _shop, env = setup
    (root / "seamline.yaml").write_text(_price_only_spec("{ path: /price, timeout: 5s, cache: 1s }"), encoding="utf-8")
    calls: list[float] = []
    erp.route("POST", "/price", _price_route(calls))
    daemon = DaemonProcess(root, root / "state.db", env=env)
    try:
        daemon.start()
        asked_at = time.monotonic()  # the entry cannot expire before this plus the 1s TTL
        first = httpx.post(f"{daemon.url}/price", json={"sku": "P1"})
        assert first.headers["X-Seamline-Cache"] == "miss" and len(calls) == 1
        # Same request until the cache lets one through. Only a lower bound on time is asserted (a
        # slow machine may see fewer hits, never an early miss), and the wait is bounded.
        until = asked_at + 10
        while True:
            again = httpx.post(f"{daemon.url}/price", json={"sku": "P1"})
            answered_at = time.monotonic()
            assert again.status_code == 200 and again.json() == first.json()
            if again.headers["X-Seamline-Cache"] == "miss":
                break
            assert len(calls) == 1 and answered_at < until, "the entry never expired"
            time.sleep(0.05)
        assert answered_at - asked_at >= 1.0, "the entry expired before its TTL"
        assert len(calls) == 2
    finally:
        daemon.stop()


def test_dry_run_runs_each_targets_pre_send_check_and_says_what_would_be_refused(setup: Setup) -> None:
    """Was: the dry run said "would write 3" and the real run refused one (the target's schema)."""
    root, erp, shop, env = setup
    erp.reset()
    erp.seed(
        "/products",
        [
            {"id": k, "Product": k, "name": name, "changed": "2025-01-01"}
            for k, name in (("A", "valve a"), ("B", ""), ("C", "valve c"))
        ],
    )
    _use_spec(
        root,
        'products: { path: "/products/{sku}", method: PUT }',
        'products: { path: "/products/{sku}", method: PUT, schema: { type: object, properties: '
        "{ name: { type: string, minLength: 1 } } } }",
    )
    state = root / "dry.db"
    code, output = cli(
        "run", str(root), "--once", "--dry-run", "--format", "json", "--state", f"sqlite:///{state}", env=env
    )
    assert code == 1, output  # something would be refused: the dry run says so as the real run would
    report = json.loads(output)
    assert report["flows"]["catalog"] == {
        "read": 3,
        "records": 3,
        "would_write": 2,
        "refused": 1,
        "rejected": 0,
        "skipped": 0,
        "failed": 0,
    }
    assert [w["key"] for w in report["writes"]] == ["A", "C"]
    (refused,) = report["refused"]
    assert refused["key"] == "B" and "shop.products" in refused["reason"] and "name" in refused["reason"]
    assert shop.writes() == [] and not state.exists() and not (root / ".seamline").exists()

    code, output = cli("run", str(root), "--once", "--state", f"sqlite:///{state}", env=env)
    assert code == 1 and shop.applied_count("/products/") == 2, output  # the real run does what it said
